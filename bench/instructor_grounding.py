"""What the demo's instructor can tell: its teacher-forced answers per task, on scenes it never saw.

``instructor_model`` reports held-out accuracy on the dataset's val split, whose few clips give
a handful of "where is" questions. This bench asks many more, on fresh demo-world scenes of the
instructor's corpus world (another seed than the one it trained on) and on some of its own
training scenes, and splits the answers by task: ``edit`` (what the edit brings, then where it
goes) and ``locate`` ("Where is the <object>?"). Position accuracy is the place phrase right
(teacher-forced, every token); chance is always answering the most common place; "ranked first"
(``locate``) is how often the true place is the likeliest of the nine place phrases. An instructor that knows where objects are
beats chance on ``locate``; on ``edit`` the adds (whose instruction says where) and the looks
("everywhere") are right without looking. Whether it looks at all: the answer loss with each
example's own images beside the loss with blank ones (equal: the picture is not read), and the
share of attention the last prompt token gives the image tokens beside an even spread.

``--steps`` / ``--batch-size`` / ``--pad-to-square`` also pretrain an instructor with those
options (the examples ``instructor_model`` uses, from ``make demo``'s dataset) and score it.

    DAGSTER_HOME=.dagster .venv/bin/python bench/instructor_grounding.py
    DAGSTER_HOME=.dagster .venv/bin/python bench/instructor_grounding.py --steps 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
from bench_common import machine, note, table

from viva_pipelines.config.loader import load_settings
from viva_pipelines.config.schema import Settings
from viva_pipelines.embedded.instructor import ensure_tiny_instructor
from viva_pipelines.embedded.instructor_corpus import corpus_examples
from viva_pipelines.model.instructor import Instructor, InstructorConfig
from viva_pipelines.pairs.captions import POSITION_PHRASES
from viva_pipelines.settings import default_conf_dir
from viva_pipelines.storage import Storage
from viva_pipelines.train.instructor import (
    GroundingExample,
    encode_examples,
    grounding_accuracy,
    pretrain_instructor,
    pretraining_examples,
    training_batch,
)
from viva_pipelines.train.runs import instructor_location

TASKS = ("edit", "locate")


def pretrained(storage: Storage, settings: Settings, args: argparse.Namespace, folder: Path) -> str:
    """An instructor pretrained here with the bench's options (as ``instructor_model`` does)."""
    options = settings.instructor.pretrain.model_copy(
        update={k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size)) if v}
    )
    manifest = storage.read_parquet("qc_dataset/manifest.parquet")
    train, val = pretraining_examples(storage, manifest, options)
    shutil.copytree(ensure_tiny_instructor(), folder, dirs_exist_ok=True)
    started = time.perf_counter()
    pretrain_instructor(
        folder,
        train,
        val,
        options,
        prompt_template=settings.sft.model.instructor_prompt,
        pad_to_square=args.pad_to_square,
    )
    note(
        f"pretrained {options.steps} steps of {options.batch_size} in "
        f"{time.perf_counter() - started:.0f}s"
    )
    return str(folder)


PLACES = [phrase for row in POSITION_PHRASES for phrase in row]


def answer_log_probs(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each label token's log-probability under the logits that predict it (``[B, T-1]``) and
    where the labels are answer tokens (the rest of the log-probabilities mean nothing)."""
    labels = labels[:, 1:]
    log_probs = logits[:, :-1].log_softmax(-1)
    return log_probs.gather(-1, labels.clamp(min=0)[..., None])[..., 0], labels != -100


@torch.no_grad()
def ranked_place_accuracy(instructor: Instructor, examples: list[GroundingExample]) -> float:
    """The share of ``locate`` questions whose true place is the likeliest of the nine place
    phrases as the whole answer (no partial credit, no teacher-forced prefix)."""
    right = 0
    for example in examples:
        candidates = [dataclasses.replace(example, answer=f"{p}.", position=p) for p in PLACES]
        batch = training_batch(instructor, encode_examples(instructor, candidates))
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = instructor.model(**inputs, use_cache=False).logits
        picked, answered = answer_log_probs(logits, batch["labels"])
        scores = (picked * answered).sum(1)
        right += PLACES[int(scores.argmax())] == example.position
    return right / len(examples)


@torch.no_grad()
def picture_reliance(
    instructor: Instructor, examples: list[GroundingExample], batch_size: int = 64
) -> tuple[float, float, float, float]:
    """How much the answers lean on the picture: the teacher-forced answer loss (mean per
    answer token) with the examples' own images, the same with blank ones (every pixel the
    processor's mean), the share of its attention the last prompt token gives the image
    tokens (mean over layers, heads and examples), and that share were attention spread
    evenly over the prompt. Equal losses mean the picture is not read."""
    model = instructor.model
    implementation = model.config._attn_implementation
    model.set_attn_implementation("eager")  # attention weights need the eager path
    image_token = model.config.image_token_index
    encoded = encode_examples(instructor, examples)
    total = {"own": 0.0, "blank": 0.0}
    tokens = 0
    shares, even = [], []
    try:
        for start in range(0, len(examples), batch_size):
            part = encoded[start : start + batch_size]
            batch = training_batch(instructor, part)
            labels = batch.pop("labels")
            for name, pixels in (
                ("own", batch["pixel_values"]),
                ("blank", torch.zeros_like(batch["pixel_values"])),
            ):
                out = model(**{**batch, "pixel_values": pixels}, output_attentions=name == "own")
                picked, answered = answer_log_probs(out.logits, labels)
                total[name] -= float(picked[answered].sum())
                if name == "own":
                    last = torch.tensor([len(e.prompt) - 1 for e in part])
                    on_image = (batch["input_ids"] == image_token).float()
                    even.append(on_image.sum(1) / (last + 1))
                    for weights in out.attentions:  # [B, heads, queries, keys] per layer
                        rows = weights[torch.arange(len(part)), :, last]  # [B, heads, keys]
                        shares.append((rows * on_image[:, None]).sum(-1).mean(1))
            tokens += int(answered.sum())
    finally:
        model.set_attn_implementation(implementation)
    own, blank = total["own"] / tokens, total["blank"] / tokens
    return own, blank, float(torch.cat(shares).mean()), float(torch.cat(even).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="data", help="make demo's storage root")
    parser.add_argument("--scenes", type=int, default=40, help="scenes per set")
    parser.add_argument("--steps", type=int, help="pretrain with this many steps")
    parser.add_argument("--batch-size", type=int, help="pretrain with this batch size")
    parser.add_argument("--pad-to-square", action="store_true", help="pad images to squares")
    args = parser.parse_args()
    storage = Storage(args.root)
    settings = load_settings(default_conf_dir())
    with tempfile.TemporaryDirectory(prefix="viva-instructor-bench-") as tmp:
        if args.steps or args.batch_size or args.pad_to_square:
            location = pretrained(storage, settings, args, Path(tmp))
            described = f"pretrained here ({location})"
        else:
            location = instructor_location(storage)
            if location is None:
                raise SystemExit("no instructor_model yet: run make demo first")
            described = f"instructor_model's ({location})"
        instructor = Instructor(
            InstructorConfig(
                model=location,
                prompt_template=settings.sft.model.instructor_prompt,
                pad_to_square=args.pad_to_square,
            )
        )
        seed = settings.instructor.pretrain.seed
        sets = {
            "fresh scenes": corpus_examples(args.scenes, seed=seed + 7),
            "its training scenes": corpus_examples(args.scenes, seed=seed),
        }
        rows = []
        for name, examples in sets.items():
            note(f"scoring {len(examples)} examples of {name}")
            for task in TASKS:
                asked = [e for e in examples if e.task == task]
                scores = grounding_accuracy(instructor, asked)
                change = scores["change_accuracy"]
                ranked = ranked_place_accuracy(instructor, asked) if task == "locate" else None
                own, blank, share, even = picture_reliance(instructor, asked)
                rows.append(
                    [
                        name,
                        task,
                        str(len(asked)),
                        f"{scores['position_accuracy']:.3f}",
                        f"{scores['position_chance']:.3f}",
                        "" if ranked is None else f"{ranked:.3f}",
                        "" if math.isnan(change) else f"{change:.3f}",
                        f"{scores['token_accuracy']:.3f}",
                        f"{own:.3f} / {blank:.3f}",
                        f"{share:.3f} (even {even:.3f})",
                    ]
                )
    print(machine(torch.device("cpu")))
    print(f"\ninstructor: {described}\n")
    table(
        [
            "scenes",
            "task",
            "questions",
            "place right",
            "chance",
            "place ranked first",
            "change right",
            "tokens right",
            "answer loss, own / blank images",
            "attention on the image",
        ],
        rows,
        right=2,
    )


if __name__ == "__main__":
    main()
