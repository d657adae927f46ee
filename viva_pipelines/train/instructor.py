"""Pretraining the demo's tiny instructor, so that its condition tokens ground the instruction.

In production the instructor is a pretrained VLM (LLaVA-LLaMA-3-8B): its hidden states already
know what "the cyan hexagon" is and where it sits in the first frame. The demo's tiny LLaVA
starts with random weights, whose states tell colour words apart but not what they refer to in
the picture. This module gives it that knowledge on the dataset's own frames and texts, with
the language-modelling loss of a VLM's instruction tuning, on answers that need the picture:

- ``edit``: the instructor's own prompt (first frame, reference, instruction), exactly as the
  editor will show it, answered by where the edit goes (:func:`~viva_pipelines.pairs.captions.
  position_phrase` of the edit mask at that frame: which object the instruction means, and
  where it is) and what the frame shows afterwards (the target caption);
- ``caption``: "Describe the video." answered by the source caption (what is in the frame);
- ``locate``: "Where is the <label>?" for every object ``tracked_masks`` kept, answered by
  where it is in that frame (naming an object is not enough: it has to be found).

The answer follows the user turn directly, so its first tokens are predicted from the last
prompt token, whose hidden state is among the condition tokens the editor reads: grounding has
to be there, not only in a later answer position. Frames other than the first are used too
(with the mask of that frame), and every training example also comes mirrored (left and right
swapped in the frame and in the texts). Held-out accuracy is measured on the val split.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from viva_pipelines.masks.shard import load_frames, load_mask, manifest_key
from viva_pipelines.model.instructor import Instructor, InstructorConfig
from viva_pipelines.pairs.captions import position_phrase
from viva_pipelines.storage import Storage
from viva_pipelines.train.config import PretrainOptions
from viva_pipelines.train.runs import INSTRUCTOR_RECORD
from viva_pipelines.train.schedule import warmup_cosine

log = logging.getLogger(__name__)

#: The question of the captioning task.
DESCRIBE = "Describe the video."
#: The question of the locating task.
LOCATE = "Where is the {label}?"
#: Frames per video the grounding examples are cut from (the first one always).
FRAMES_PER_VIDEO = 5


@dataclass(frozen=True)
class GroundingExample:
    """One (prompt, answer) pair: ``frame`` (and ``reference``) ``uint8 [H, W, 3]``."""

    task: str  # "edit" | "caption" | "locate"
    instruction: str
    frame: np.ndarray
    reference: np.ndarray | None
    answer: str
    position: str | None = None  # the answer's position phrase (edit, locate)

    def mirrored(self) -> GroundingExample:
        """The example seen in a mirror: frame and reference flipped left to right, and
        "left" and "right" swapped in the instruction, the answer and the position."""
        return GroundingExample(
            self.task,
            _swap_sides(self.instruction),
            self.frame[:, ::-1].copy(),
            None if self.reference is None else self.reference[:, ::-1].copy(),
            _swap_sides(self.answer),
            None if self.position is None else _swap_sides(self.position),
        )


def _swap_sides(text: str) -> str:
    return re.sub(r"\b(left|right)\b", lambda m: SIDES[m.group(1)], text)


SIDES = {"left": "right", "right": "left"}


def edit_answer(position: str, target_caption: str) -> str:
    """What an edit example answers: ``"<where>: <the target caption>."``."""
    return f"{position}: {target_caption.strip().rstrip('.')}."


def _frame_picks(count: int, first_only: bool) -> list[int]:
    if first_only or count == 1:
        return [0]
    return sorted({int(i) for i in np.linspace(0, count - 1, min(FRAMES_PER_VIDEO, count))})


def grounding_examples(
    storage: Storage, manifest: pd.DataFrame, *, split: str, first_frame_only: bool = False
) -> list[GroundingExample]:
    """The examples of one split from a ``qc_dataset`` manifest (accepted video rows): per
    pair, an ``edit`` example per picked frame; per source video, a ``caption`` example per
    picked frame. ``first_frame_only`` keeps the frame the editor's instructor sees (for
    held-out accuracy)."""
    from viva_pipelines.train.sft_data import _read_png

    rows = manifest[
        (manifest["status"] == "accepted")
        & (manifest["modality"] == "video")
        & (manifest["split"] == split)
    ]
    examples: list[GroundingExample] = []
    captioned: set[str] = set()
    frames_of: dict[str, np.ndarray] = {}
    for row in rows.itertuples(index=False):
        if row.source_key not in frames_of:
            frames_of[row.source_key] = load_frames(storage, row.source_key)
        frames = frames_of[row.source_key]
        masks = load_mask(storage, row.mask_key)
        reference = (
            _read_png(storage, row.reference_key)
            if isinstance(row.reference_key, str) and row.reference_key
            else None
        )
        count = min(len(frames), len(masks))
        for t in _frame_picks(count, first_frame_only):
            if masks[t].any() and isinstance(row.target_caption, str):
                where = position_phrase(masks[t])
                answer = edit_answer(where, row.target_caption)
                examples.append(
                    GroundingExample("edit", row.instruction, frames[t], reference, answer, where)
                )
            if row.source_key not in captioned and isinstance(row.source_caption, str):
                examples.append(
                    GroundingExample("caption", DESCRIBE, frames[t], None, row.source_caption)
                )
        captioned.add(row.source_key)
    examples += _locate_examples(storage, rows, frames_of, first_frame_only)
    if split == "train":
        examples += [example.mirrored() for example in examples]
    return examples


def _locate_examples(
    storage: Storage, rows: pd.DataFrame, frames_of: dict[str, np.ndarray], first_only: bool
) -> list[GroundingExample]:
    """ "Where is the <label>?" for each object ``tracked_masks`` kept in the rows' videos."""
    examples: list[GroundingExample] = []
    if "shard" not in rows.columns:  # a dataset not built from shards: no tracks to read
        return examples
    videos = rows.drop_duplicates("video_id")
    for shard, group in videos.groupby("shard"):
        key = manifest_key(shard)
        if not storage.exists(key):
            continue
        tracks = storage.read_parquet(key)
        tracks = tracks[(tracks["status"] == "kept") & tracks["video_id"].isin(group["video_id"])]
        sources = dict(zip(group["video_id"], group["source_key"], strict=True))
        for track in tracks.itertuples(index=False):
            frames = frames_of[sources[track.video_id]]
            masks = load_mask(storage, track.mask_key)
            question = LOCATE.format(label=track.label)
            for t in _frame_picks(min(len(frames), len(masks)), first_only):
                if masks[t].any():
                    where = position_phrase(masks[t])
                    examples.append(
                        GroundingExample("locate", question, frames[t], None, f"{where}.", where)
                    )
    return examples


@dataclass(frozen=True)
class EncodedExample:
    """An example tokenized once: ``prompt`` ids (images expanded), ``answer`` ids ending with
    the end token, ``pixels`` ``[n_images, 3, s, s]`` (first frame, then reference)."""

    prompt: torch.Tensor
    answer: torch.Tensor
    pixels: torch.Tensor


def encode_examples(
    instructor: Instructor, examples: Sequence[GroundingExample], chunk: int = 64
) -> list[EncodedExample]:
    """Each prompt exactly as :meth:`Instructor.encode` builds it, and its answer."""
    tokenizer = instructor.tokenizer
    encoded = []
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        inputs = instructor.prepare_inputs(
            [e.instruction for e in part], [e.frame for e in part], [e.reference for e in part]
        )
        lengths = inputs["attention_mask"].sum(1).tolist()
        image = 0
        for i, example in enumerate(part):
            images = 1 + int(example.reference is not None)
            answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
            encoded.append(
                EncodedExample(
                    inputs["input_ids"][i, : lengths[i]].cpu(),
                    torch.tensor([*answer, tokenizer.eos_token_id]),
                    inputs["pixel_values"][image : image + images].cpu(),
                )
            )
            image += images
    return encoded


def training_batch(
    instructor: Instructor, examples: Sequence[EncodedExample]
) -> dict[str, torch.Tensor]:
    """LLaVA inputs with ``labels``: each prompt, then its answer right after the user turn,
    right-padded; the loss is on the answers only."""
    total = max(len(e.prompt) + len(e.answer) for e in examples)
    batch = len(examples)
    input_ids = torch.full((batch, total), instructor.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, total), dtype=torch.long)
    labels = torch.full((batch, total), -100, dtype=torch.long)
    for i, example in enumerate(examples):
        n, m = len(example.prompt), len(example.answer)
        input_ids[i, :n] = example.prompt
        input_ids[i, n : n + m] = example.answer
        attention_mask[i, : n + m] = 1
        labels[i, n : n + m] = example.answer
    device = instructor.device
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "labels": labels.to(device),
        "pixel_values": torch.cat([e.pixels for e in examples]).to(device),
    }


@torch.no_grad()
def grounding_accuracy(
    instructor: Instructor, examples: Sequence[GroundingExample], batch_size: int = 64
) -> dict[str, float]:
    """Teacher-forced accuracy on held-out examples: ``token_accuracy`` over all answer
    tokens, ``answer_accuracy`` (every token of the answer right), ``position_accuracy`` (the
    position phrase of edit and locate examples right, i.e. which object and where, decoded
    greedily from the prompt), and ``position_chance`` (always answering the most common
    position)."""
    model = instructor.model
    model.eval()
    encoded = encode_examples(instructor, examples)
    tokens = right = answers = answers_right = positions = positions_right = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = training_batch(instructor, encoded[start : start + batch_size])
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        predicted = logits[:, :-1].argmax(-1)
        labels = batch["labels"][:, 1:]
        correct = (predicted == labels) & (labels != -100)
        for i, example in enumerate(chunk):
            where = labels[i] != -100
            count, ok = int(where.sum()), int(correct[i].sum())
            tokens, right = tokens + count, right + ok
            answers, answers_right = answers + 1, answers_right + int(ok == count)
            if example.position is not None:
                span = len(
                    instructor.tokenizer(example.position, add_special_tokens=False)["input_ids"]
                )
                first = int(where.nonzero()[0])
                positions += 1
                positions_right += int(bool(correct[i, first : first + span].all()))
    phrases = [e.position for e in examples if e.position is not None]
    chance = max(phrases.count(p) for p in set(phrases)) / len(phrases) if phrases else math.nan
    return {
        "token_accuracy": right / max(tokens, 1),
        "answer_accuracy": answers_right / max(answers, 1),
        "position_accuracy": positions_right / positions if positions else math.nan,
        "position_chance": chance,
    }


def pretrain_instructor(
    model_dir: str | Path,
    train: Sequence[GroundingExample],
    val: Sequence[GroundingExample],
    options: PretrainOptions,
    *,
    prompt_template: str = "instructor.md",
    progress: bool = False,
) -> dict[str, Any]:
    """Train every weight of the LLaVA in ``model_dir`` (vision tower, projector, language
    model) on ``train`` and save it back there (``save_pretrained``, so it loads like any
    LLaVA). AdamW with warm-up and cosine decay, batches drawn epoch-wise; deterministic for a
    seed, the caller's random state left alone. Returns the held-out accuracies before and
    after (:func:`grounding_accuracy`), the loss curve's ends and the sizes."""
    if not train:
        raise ValueError("no training examples for the instructor")
    instructor = Instructor(InstructorConfig(model=str(model_dir), prompt_template=prompt_template))
    model = instructor.model
    before = grounding_accuracy(instructor, val) if val else {}
    encoded = encode_examples(instructor, train)
    model.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: warmup_cosine(s, max(1, min(50, options.steps // 10)), options.steps, 0.1),
    )
    generator = torch.Generator().manual_seed(options.seed)
    order = torch.empty(0, dtype=torch.long)
    losses: list[float] = []
    iterator = range(options.steps)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="instructor")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        for _ in iterator:
            if len(order) < options.batch_size:
                order = torch.cat([order, torch.randperm(len(train), generator=generator)])
            picked, order = order[: options.batch_size], order[options.batch_size :]
            loss = model(**training_batch(instructor, [encoded[i] for i in picked])).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
    model.eval().requires_grad_(False)
    model.save_pretrained(model_dir)
    after = grounding_accuracy(instructor, val) if val else {}
    result = {
        **{f"val_{k}": v for k, v in after.items()},
        **{f"val_{k}_untrained": v for k, v in before.items() if k != "position_chance"},
        "train_loss_first": losses[0],
        "train_loss_last": float(np.mean(losses[-20:])),
        "steps": options.steps,
        "train_examples": len(train),
        "val_examples": len(val),
    }
    log.info("instructor pretrained: %s", result)
    return result


# -- the asset's library call ------------------------------------------------------------------

ASSET = "instructor_model"
RECORD_KEY = INSTRUCTOR_RECORD  # read by sft_config through instructor_location


def prepare_instructor(
    storage: Storage,
    manifest: pd.DataFrame,
    *,
    model: str | None,
    options: PretrainOptions,
    prompt_template: str = "instructor.md",
) -> dict[str, Any]:
    """Resolve (production) or pretrain (demo) the instructor and write its record
    (:data:`RECORD_KEY`): ``location`` (what ``sft_checkpoint`` loads), ``sha256`` of its
    weights and, when trained here, ``trained`` (the held-out accuracies of
    :func:`pretrain_instructor`).

    With ``model`` (``models.instructor``: a local path or hub id) nothing is trained: a
    pretrained VLM already grounds instructions. Without it the tiny LLaVA that
    :func:`~viva_pipelines.embedded.instructor.ensure_tiny_instructor` builds is pretrained
    on the dataset and stored under ``instructor_model/<weights sha256>/``, so a different
    instructor is a different location (and a different SFT cache).
    """
    from viva_pipelines.embedded.instructor import ensure_tiny_instructor
    from viva_pipelines.rewards.clip_rewards import weights_sha256

    if model:
        local = Path(model).expanduser()
        record = {
            "location": model,
            "sha256": weights_sha256(local) if local.is_dir() else None,
            "trained": None,
        }
    else:
        train = grounding_examples(storage, manifest, split="train")
        val = grounding_examples(storage, manifest, split="val", first_frame_only=True)
        with tempfile.TemporaryDirectory(prefix="viva-instructor-") as tmp:
            shutil.copytree(ensure_tiny_instructor(), tmp, dirs_exist_ok=True)
            metrics = pretrain_instructor(tmp, train, val, options, prompt_template=prompt_template)
            digest = weights_sha256(Path(tmp))
            location = storage.put_dir(tmp, f"{ASSET}/{digest[:16]}")
        record = {"location": location, "sha256": digest, "trained": metrics}
    storage.write_json(RECORD_KEY, record)
    return record
