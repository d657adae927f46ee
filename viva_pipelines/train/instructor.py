"""Pretraining the demo's tiny instructor, so that its condition tokens ground the instruction.

In production the instructor is a pretrained VLM (LLaVA-LLaMA-3-8B): its hidden states already
know what "the cyan hexagon" is and where it sits in the first frame. The demo's tiny LLaVA
starts with random weights, whose states tell colour words apart but not what they refer to in
the picture. This module gives it that knowledge on the dataset's own frames and texts (and,
for breadth, on :mod:`~viva_pipelines.embedded.instructor_corpus`'s fresh scenes), with the
language-modelling loss of a VLM's instruction tuning, on answers that need the picture:

- ``edit``: the instructor's own prompt (first frame, reference, instruction), exactly as the
  editor will show it, answered by what the edit brings (the target caption's words that the
  source caption lacks: "red diamond", "nothing", "pencil sketch"), where it goes
  (:func:`~viva_pipelines.pairs.captions.position_phrase` of the edit mask at that frame:
  which object the instruction means, and where it is) and what the frame shows afterwards
  (the target caption);
- ``caption``: "Describe the video." answered by the source caption (what is in the frame);
- ``locate``: "Where is the <label>?" for every object ``tracked_masks`` kept, answered by
  where it is in that frame (naming an object is not enough: it has to be found).

The answer follows the user turn directly, so its first token is predicted from the last
prompt token, whose hidden state is among the condition tokens the editor reads and is its
pooled vector (``instructor_last``): what the edit brings comes first so that this state has to
name it, not only a later answer position. Frames other than the first are used too
(with the mask of that frame), and every training example of the dataset also comes mirrored
(left and right swapped in the frame and in the texts). Held-out accuracy is measured on the
val split.
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
from viva_pipelines.pairs.captions import mirror_sides, position_phrase
from viva_pipelines.storage import Storage
from viva_pipelines.train.config import PretrainOptions
from viva_pipelines.train.runs import INSTRUCTOR_RECORD
from viva_pipelines.train.schedule import warmup_cosine
from viva_pipelines.video.images import decode_image

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
    lead: str = ""  # what the answer says before the position phrase (edit: the change)

    def mirrored(self) -> GroundingExample:
        """The example seen in a mirror: frame and reference flipped left to right, and
        "left" and "right" swapped in the instruction, the answer and the position."""
        return GroundingExample(
            self.task,
            mirror_sides(self.instruction),
            self.frame[:, ::-1].copy(),
            None if self.reference is None else self.reference[:, ::-1].copy(),
            mirror_sides(self.answer),
            None if self.position is None else mirror_sides(self.position),
            mirror_sides(self.lead),
        )


#: Words that say nothing about the change on their own ("as" a sketch, "at" night).
FUNCTION_WORDS = frozenset({"a", "an", "the", "as", "in", "at", "of", "on", "and", "with"})


def edit_change(source_caption: str, target_caption: str) -> str:
    """What an edit brings, in the captions' own words: the target caption's words that the
    source caption lacks, in order, function words left out (``"red"``, ``"magenta star"``,
    ``"nothing"``, ``"pencil sketch night"``); when there are none, ``"without"`` and the
    words that went (``"without magenta square"``, an object removed among others)."""

    def words(text: str) -> list[str]:
        return [w for w in re.findall(r"[a-z]+", text.lower()) if w not in FUNCTION_WORDS]

    def missing(text: str, other: str) -> str:
        known = set(words(other))
        return " ".join(dict.fromkeys(w for w in words(text) if w not in known))

    new = missing(target_caption, source_caption)
    return new or f"without {missing(source_caption, target_caption)}".strip()


def edit_answer(change: str, position: str, target_caption: str) -> str:
    """What an edit example answers: ``"<change>, <where>: <the target caption>."``."""
    return f"{change}, {position}: {target_caption.strip().rstrip('.')}."


def frame_picks(count: int, first_only: bool) -> list[int]:
    """The frames of a ``count``-frame clip that examples are cut from."""
    if first_only or count == 1:
        return [0]
    return sorted({int(i) for i in np.linspace(0, count - 1, min(FRAMES_PER_VIDEO, count))})


def edit_examples(
    instruction: str,
    frames: np.ndarray,
    masks: np.ndarray,
    reference: np.ndarray | None,
    source_caption: str,
    target_caption: str,
    picks: Sequence[int],
) -> list[GroundingExample]:
    """An ``edit`` example per picked frame where the edit mask (``bool [T, H, W]``) is seen."""
    change = edit_change(source_caption, target_caption)
    examples = []
    for t in picks:
        if masks[t].any():
            where = position_phrase(masks[t])
            answer = edit_answer(change, where, target_caption)
            examples.append(
                GroundingExample(
                    "edit", instruction, frames[t], reference, answer, where, f"{change},"
                )
            )
    return examples


def locate_examples(
    label: str, frames: np.ndarray, masks: np.ndarray, picks: Sequence[int]
) -> list[GroundingExample]:
    """ "Where is the <label>?" per picked frame where the object (``bool [T, H, W]``) is seen."""
    question = LOCATE.format(label=label)
    examples = []
    for t in picks:
        if masks[t].any():
            where = position_phrase(masks[t])
            examples.append(
                GroundingExample("locate", question, frames[t], None, f"{where}.", where)
            )
    return examples


def caption_examples(
    frames: np.ndarray, caption: str, picks: Sequence[int]
) -> list[GroundingExample]:
    """ "Describe the video." per picked frame, answered by the video's caption."""
    return [GroundingExample("caption", DESCRIBE, frames[t], None, caption) for t in picks]


def grounding_examples(
    storage: Storage, manifest: pd.DataFrame, *, split: str, first_frame_only: bool = False
) -> list[GroundingExample]:
    """The examples of one split from a ``qc_dataset`` manifest (accepted video rows): per
    pair, an ``edit`` example per picked frame; per source video, a ``caption`` example per
    picked frame and a ``locate`` example per tracked object and picked frame.
    ``first_frame_only`` keeps the frame the editor's instructor sees (for held-out
    accuracy). Training examples also come mirrored."""
    rows = manifest[
        (manifest["status"] == "accepted")
        & (manifest["modality"] == "video")
        & (manifest["split"] == split)
    ]
    examples: list[GroundingExample] = []
    frames_of: dict[str, np.ndarray] = {}
    for row in rows.itertuples(index=False):
        new_video = row.source_key not in frames_of
        if new_video:
            frames_of[row.source_key] = load_frames(storage, row.source_key)
        frames = frames_of[row.source_key]
        masks = load_mask(storage, row.mask_key)
        reference = (
            decode_image(storage.read_bytes(row.reference_key))
            if isinstance(row.reference_key, str) and row.reference_key
            else None
        )
        picks = frame_picks(min(len(frames), len(masks)), first_frame_only)
        if isinstance(row.target_caption, str):
            examples += edit_examples(
                row.instruction,
                frames,
                masks,
                reference,
                str(row.source_caption),
                row.target_caption,
                picks,
            )
        if new_video and isinstance(row.source_caption, str):
            examples += caption_examples(frames, row.source_caption, picks)
    examples += _locate_examples(storage, rows, frames_of, first_frame_only)
    if split == "train":
        examples += [example.mirrored() for example in examples]
    return examples


def _locate_examples(
    storage: Storage, rows: pd.DataFrame, frames_of: dict[str, np.ndarray], first_only: bool
) -> list[GroundingExample]:
    """The ``locate`` examples of each object ``tracked_masks`` kept in the rows' videos."""
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
            picks = frame_picks(min(len(frames), len(masks)), first_only)
            examples += locate_examples(track.label, frames, masks.astype(bool), picks)
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


def answer_loss(instructor: Instructor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mean loss on the answers of a :func:`training_batch`, the system prefix run once.

    Every prompt starts with the same system prefix (:attr:`Instructor.prefix_ids`, checked
    when each prompt is built) and a causal language model's prefix never attends to what
    follows it, so its keys and values are computed for one row and repeated over the batch,
    and the rest of every sequence attends to them. The loss and its gradients are those of the
    whole batch's forward pass up to rounding (the prefix's gradient is the batch's sum), for
    about half the work: the demo's prefix is 108 tokens of about 220. The prefix holds no
    image and no answer token, so nothing the loss reads is lost by running it apart."""
    prefix = instructor.prefix_length
    model = instructor.model
    if prefix == 0:
        return model(**batch).loss
    input_ids = batch["input_ids"]
    cache = model(input_ids=input_ids[:1, :prefix], use_cache=True).cache
    cache.batch_repeat_interleave(len(input_ids))
    return model(
        input_ids=input_ids[:, prefix:],
        pixel_values=batch.get("pixel_values"),
        attention_mask=batch["attention_mask"],
        cache=cache,
        labels=batch["labels"][:, prefix:],
        use_cache=False,
    ).loss


@torch.no_grad()
def grounding_accuracy(
    instructor: Instructor, examples: Sequence[GroundingExample], batch_size: int = 64
) -> dict[str, float]:
    """Teacher-forced accuracy on held-out examples: ``token_accuracy`` over all answer
    tokens, ``answer_accuracy`` (every token of the answer right), ``change_accuracy`` (the
    change an edit example names first right: what the pooled state must say),
    ``position_accuracy`` (the position phrase of edit and locate examples right, i.e. which
    object and where), and ``position_chance`` (always answering the most common position)."""
    model = instructor.model
    model.eval()
    encoded = encode_examples(instructor, examples)

    def length(text: str) -> int:
        return len(instructor.tokenizer(text, add_special_tokens=False)["input_ids"])

    tokens = right = answers = answers_right = positions = positions_right = 0
    changes = changes_right = 0
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
            first = int(where.nonzero()[0])
            if example.lead:
                span = length(example.lead.rstrip(","))
                changes += 1
                changes_right += int(bool(correct[i, first : first + span].all()))
            if example.position is not None:
                lead = length(example.lead) if example.lead else 0
                joined = f"{example.lead} {example.position}" if example.lead else example.position
                span = slice(first + lead, first + length(joined))
                positions += 1
                positions_right += int(bool(correct[i, span].all()))
    phrases = [e.position for e in examples if e.position is not None]
    chance = max(phrases.count(p) for p in set(phrases)) / len(phrases) if phrases else math.nan
    return {
        "token_accuracy": right / max(tokens, 1),
        "answer_accuracy": answers_right / max(answers, 1),
        "change_accuracy": changes_right / changes if changes else math.nan,
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
    pad_to_square: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Train every weight of the LLaVA in ``model_dir`` (vision tower, projector, language
    model) on ``train`` and save it back there (``save_pretrained``, so it loads like any
    LLaVA). AdamW with warm-up and cosine decay, batches drawn epoch-wise; deterministic for a
    seed, the caller's random state left alone. Returns the held-out accuracies before and
    after (:func:`grounding_accuracy`), the loss curve's ends and the sizes."""
    if not train:
        raise ValueError("no training examples for the instructor")
    instructor = Instructor(
        InstructorConfig(
            model=str(model_dir), prompt_template=prompt_template, pad_to_square=pad_to_square
        )
    )
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
            loss = answer_loss(instructor, training_batch(instructor, [encoded[i] for i in picked]))
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


def pretraining_examples(
    storage: Storage, manifest: pd.DataFrame, options: PretrainOptions
) -> tuple[list[GroundingExample], list[GroundingExample]]:
    """What the demo's instructor is pretrained and scored on: (train, val). Train is the
    dataset's training split and ``options.corpus_scenes`` scenes of
    :mod:`~viva_pipelines.embedded.instructor_corpus`; val the dataset's val split, first
    frames only (what the editor's instructor sees)."""
    from viva_pipelines.embedded.instructor_corpus import corpus_examples

    train = grounding_examples(storage, manifest, split="train")
    train += corpus_examples(options.corpus_scenes, seed=options.seed)
    val = grounding_examples(storage, manifest, split="val", first_frame_only=True)
    return train, val


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
    pad_to_square: bool = False,
) -> dict[str, Any]:
    """Resolve (production) or pretrain (demo) the instructor and write its record
    (:data:`RECORD_KEY`): ``location`` (what ``sft_checkpoint`` loads), ``sha256`` of its
    weights and, when trained here, ``trained`` (the held-out accuracies of
    :func:`pretrain_instructor`).

    With ``model`` (``models.instructor``: a local path or hub id) nothing is trained: a
    pretrained VLM already grounds instructions. Without it the tiny LLaVA that
    :func:`~viva_pipelines.embedded.instructor.ensure_tiny_instructor` builds is pretrained
    on the dataset's training split and ``options.corpus_scenes`` scenes of
    :mod:`~viva_pipelines.embedded.instructor_corpus` (the breadth a real VLM brings), scored
    on the dataset's val split, and stored under ``instructor_model/<weights sha256>/``, so a
    different instructor is a different location (and a different SFT cache).
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
        train, val = pretraining_examples(storage, manifest, options)
        with tempfile.TemporaryDirectory(prefix="viva-instructor-") as tmp:
            shutil.copytree(ensure_tiny_instructor(), tmp, dirs_exist_ok=True)
            metrics = pretrain_instructor(
                tmp,
                train,
                val,
                options,
                prompt_template=prompt_template,
                pad_to_square=pad_to_square,
            )
            digest = weights_sha256(Path(tmp))
            location = storage.put_dir(tmp, f"{ASSET}/{digest[:16]}")
        record = {"location": location, "sha256": digest, "trained": metrics}
    storage.write_json(RECORD_KEY, record)
    return record
