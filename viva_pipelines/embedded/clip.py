"""A tiny CLIP, built and trained here: the CPU demo's reward model.

Edit-GRPO scores edits with CLIP and PickScore (:mod:`.clip_rewards`). The demo has no
pretrained weights to load and nothing may be downloaded, and a randomly initialised CLIP
would make the rewards noise. So the demo builds a tiny ``CLIPModel`` (a byte-level BPE
tokenizer trained on the demo captions, a few-layer text and vision transformer, a PIL CLIP
image processor, all saved with ``save_pretrained`` so :class:`.ClipScorer` loads it exactly
like a real checkpoint) and trains it contrastively on the demo dataset's (frame, caption)
pairs: frames of source videos with their source caption, frames of edited videos with their
target caption. Then ``C(frame, caption)`` means something on that world, which is all the
rewards need.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from viva_pipelines.rewards.clip_rewards import ClipScorer, as_frames, pooled_embeddings
from viva_pipelines.storage import Storage
from viva_pipelines.train.schedule import warmup_cosine
from viva_pipelines.video.images import decode_image
from viva_pipelines.video.normalise import NormaliseSpec, fit_frame

log = logging.getLogger(__name__)

BOS, EOS, PAD = "<|startoftext|>", "<|endoftext|>", "<pad>"
#: CLIP's text length; the tiny model keeps it so long captions behave as with a real CLIP.
MAX_TEXT_LENGTH = 77
#: CLIP caps ``exp(logit_scale)`` at 100 during training.
MAX_LOGIT_SCALE = math.log(100.0)


def _train_tokenizer(texts: list[str], vocab_size: int):
    """A lower-casing byte-level BPE tokenizer in CLIP's shape: ``<|startoftext|> text
    <|endoftext|>``, right-padded with ``<pad>``. The end token matters: CLIP's text tower
    pools the hidden state at the first ``eos_token_id``, so every text must end with one.
    (The instructor's tokenizer, :func:`viva_pipelines.embedded.instructor._train_tokenizer`,
    adds no end token and carries chat markup, so it does not fit.)"""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, backend.token_to_id(BOS)), (EOS, backend.token_to_id(EOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="right",
        model_max_length=MAX_TEXT_LENGTH,
    )


def build_tiny_clip(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    projection_dim: int = 32,
    vocab_size: int = 512,
) -> Path:
    """Build a randomly initialised tiny ``CLIPModel`` with its tokenizer (trained on
    ``texts``, e.g. the dataset's captions) and image processor (``image_size`` square, CLIP
    normalisation) and ``save_pretrained`` them into ``out_dir``, which then loads like a real
    CLIP checkpoint. Text and vision towers share ``hidden`` / ``layers`` / ``heads``. Same
    texts and seed, same files; the caller's torch random state is left alone. Returns
    ``out_dir``."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("no texts to train the tiny CLIP tokenizer on")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    tokenizer = _train_tokenizer(texts, vocab_size)
    if tokenizer.eos_token_id == 2:
        # CLIPTextTransformer treats eos_token_id == 2 as a legacy config and pools at the
        # highest token id instead; the special-token order above keeps it at 1.
        raise AssertionError("the tiny CLIP tokenizer's end token must not have id 2")
    tower = {
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "projection_dim": projection_dim,
    }
    config = CLIPConfig(
        text_config={
            **tower,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": MAX_TEXT_LENGTH,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={**tower, "image_size": image_size, "patch_size": patch_size},
        projection_dim=projection_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


# -- training -----------------------------------------------------------------------------------


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch whose captions may repeat.

    ``image_embeds``: normalised ``[B, E]``; ``text_embeds``: normalised ``[U, E]``, the batch's
    distinct captions; ``labels``: ``int64 [B]``, each image's caption row; ``logit_scale``:
    the multiplier (already exponentiated). Image -> text is cross-entropy over the ``U``
    captions; text -> image counts every image of that caption as a positive
    (``-log sum_pos softmax``), so two frames with the same caption are never pushed apart.
    With distinct captions (``labels == arange(B)``) this is exactly the loss
    ``CLIPModel(return_loss=True)`` computes."""
    logits = logit_scale * image_embeds @ text_embeds.T  # [B, U]
    image_loss = F.cross_entropy(logits, labels)
    per_text = logits.T  # [U, B]
    positives = labels[None, :] == torch.arange(len(text_embeds), device=labels.device)[:, None]
    text_loss = (
        torch.logsumexp(per_text, dim=1)
        - torch.logsumexp(per_text.masked_fill(~positives, float("-inf")), dim=1)
    ).mean()
    return (image_loss + text_loss) / 2


def retrieval_accuracy(scorer: ClipScorer, images: np.ndarray, captions: list[str]) -> dict:
    """How well ``scorer`` pairs ``images`` with ``captions`` (same length).

    ``text_to_image``: each pair's caption queries all the images; a hit when the top image
    carries that caption (any image of it counts, captions may repeat); averaged over pairs.
    Chance is ``sum_c (n_c / N) ** 2``. ``image_to_text``: each image picks among the distinct
    captions; chance ``1 / U``."""
    unique = list(dict.fromkeys(captions))
    index = {c: i for i, c in enumerate(unique)}
    labels = torch.tensor([index[c] for c in captions])
    image_embeds = scorer.image_embeddings(images)
    text_embeds = scorer.text_embeddings(unique)
    similarity = text_embeds @ image_embeds.T  # [U, N]
    counts = torch.bincount(labels, minlength=len(unique)).double()
    text_hits = (labels[similarity.argmax(dim=1)] == torch.arange(len(unique))).double()
    total = float(len(captions))
    return {
        "text_to_image": float((counts * text_hits).sum() / total),
        "text_to_image_chance": float(((counts / total) ** 2).sum()),
        "image_to_text": float((similarity.argmax(dim=0) == labels).double().mean()),
        "image_to_text_chance": 1.0 / len(unique),
    }


def train_tiny_clip(
    model_dir: str | Path,
    images: np.ndarray,
    captions: list[str],
    *,
    val_images: np.ndarray | None = None,
    val_captions: list[str] | None = None,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Train the CLIP in ``model_dir`` contrastively on (frame, caption) pairs and save the
    weights back there (``save_pretrained``).

    ``images``: ``uint8 [N, H, W, 3]``, preprocessed once by the model's own image processor
    (so training sees exactly the pixels :class:`.ClipScorer` scores); ``captions``: ``N``
    strings. Each step draws ``batch_size`` pairs (epoch-wise shuffled) and minimises
    :func:`contrastive_loss` with the model's learned ``logit_scale`` (capped at 100 like CLIP),
    AdamW with warm-up and cosine decay. Deterministic for a seed; the caller's torch random
    state is left alone.

    Returns ``train_loss_first`` (the first batch, before any update), ``train_loss_last``
    (mean of the last 10 steps), ``val_retrieval_accuracy`` / ``val_retrieval_chance``
    (text -> image top-1 over the validation pairs, see :func:`retrieval_accuracy`; None
    without a validation set), ``val_image_to_text_accuracy`` / ``..._chance``, the same for
    the training pairs (``train_retrieval_accuracy`` ...), ``logit_scale``, ``steps``,
    ``train_pairs`` and ``val_pairs``."""
    images = as_frames(images, 4, "images")
    captions = list(captions)
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images for {len(captions)} captions")
    if not all(isinstance(c, str) and c for c in captions):
        raise ValueError("every caption must be a non-empty string")
    has_val = val_images is not None and len(val_images) > 0
    if has_val:
        val_images = as_frames(val_images, 4, "val_images")
        val_captions = list(val_captions or [])
        if len(val_captions) != len(val_images):
            raise ValueError(f"{len(val_images)} val images for {len(val_captions)} captions")
    if steps < 1 or batch_size < 2:
        raise ValueError(f"need steps >= 1 and batch_size >= 2, got {steps} and {batch_size}")

    scorer = ClipScorer(model_dir)
    model = scorer.model
    pixels = scorer.pixel_values(images)
    unique = list(dict.fromkeys(captions))
    caption_index = {c: i for i, c in enumerate(unique)}
    labels = torch.tensor([caption_index[c] for c in captions])
    text = scorer.text_inputs(unique)

    model.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, max(1, min(20, steps // 10)), steps, 0.1)
    )
    generator = torch.Generator().manual_seed(seed)
    batch = min(batch_size, len(images))
    order = torch.empty(0, dtype=torch.long)
    losses: list[float] = []
    iterator: Iterable[int] = range(steps)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="tiny CLIP")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in iterator:
            if len(order) < batch:
                order = torch.cat([order, torch.randperm(len(images), generator=generator)])
            picked, order = order[:batch], order[batch:]
            batch_captions, batch_labels = torch.unique(labels[picked], return_inverse=True)
            image_embeds = model.get_image_features(pixel_values=pixels[picked])
            text_embeds = model.get_text_features(
                input_ids=text["input_ids"][batch_captions],
                attention_mask=text["attention_mask"][batch_captions],
            )
            loss = contrastive_loss(
                F.normalize(pooled_embeddings(image_embeds), dim=-1),
                F.normalize(pooled_embeddings(text_embeds), dim=-1),
                batch_labels,
                model.logit_scale.exp(),
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
            losses.append(float(loss.detach()))
    model.eval().requires_grad_(False)
    model.save_pretrained(model_dir)

    train = retrieval_accuracy(scorer, images, captions)
    val = retrieval_accuracy(scorer, val_images, val_captions) if has_val else {}
    result = {
        "train_loss_first": losses[0],
        "train_loss_last": float(np.mean(losses[-10:])),
        "val_retrieval_accuracy": val.get("text_to_image"),
        "val_retrieval_chance": val.get("text_to_image_chance"),
        "val_image_to_text_accuracy": val.get("image_to_text"),
        "val_image_to_text_chance": val.get("image_to_text_chance"),
        "train_retrieval_accuracy": train["text_to_image"],
        "train_retrieval_chance": train["text_to_image_chance"],
        "logit_scale": scorer.logit_scale,
        "steps": steps,
        "train_pairs": len(images),
        "val_pairs": len(val_images) if has_val else 0,
    }
    log.info("tiny CLIP trained: %s", result)
    return result


# -- data ---------------------------------------------------------------------------------------


def _frame_indices(count: int, frames_per_video: int) -> list[int]:
    """``frames_per_video`` evenly spaced frame indices (first and last included)."""
    if frames_per_video == 1:
        return [count // 2]
    picks = np.linspace(0, count - 1, min(frames_per_video, count)).round().astype(int)
    return list(dict.fromkeys(int(i) for i in picks))


def _stack(frames: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """``uint8 [N, *size, 3]``: the frames, those of another size fitted to ``size`` (area
    scaling, centre crop, as training fits every sample): an external image set need not have
    the videos' size."""
    spec = NormaliseSpec(width=size[1], height=size[0], fps=1, max_frames=1)
    fitted = [f if f.shape[:2] == size else fit_frame(f, spec) for f in frames]
    return np.stack(fitted) if fitted else np.zeros((0, *size, 3), np.uint8)


def dataset_pairs(
    storage: Storage, manifest: pd.DataFrame, *, frames_per_video: int = 2
) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """(frame, caption) pairs from a ``qc_dataset`` manifest, for :func:`train_tiny_clip`:
    ``(train_images, train_captions, val_images, val_captions)``, images ``uint8 [N, H, W, 3]``
    at the videos' size, images of another size fitted to it (the CLIP processor resizes them
    later).

    Accepted rows of split ``train`` / ``val``: for a ``video`` row, ``frames_per_video``
    evenly spaced frames of the source video with ``source_caption`` and of the target video
    with ``target_caption``; for an ``image`` row, its source and target PNGs. A stored file
    is used once, however many pairs share it (a source video feeds several edits). Sides
    without a caption are skipped."""
    from viva_pipelines.masks.shard import load_frames

    if frames_per_video < 1:
        raise ValueError(f"frames_per_video must be positive, got {frames_per_video}")
    missing = {"status", "split", "modality", "source_key", "target_key"} - set(manifest.columns)
    missing |= {"source_caption", "target_caption"} - set(manifest.columns)
    if missing:
        raise ValueError(f"manifest lacks columns {sorted(missing)}")
    rows = manifest[(manifest["status"] == "accepted") & manifest["split"].isin(["train", "val"])]
    out: dict[str, tuple[list[np.ndarray], list[str]]] = {"train": ([], []), "val": ([], [])}
    seen: set[str] = set()
    skipped = 0
    video_size: tuple[int, int] | None = None
    for row in rows.itertuples(index=False):
        for side in ("source", "target"):
            key, caption = getattr(row, f"{side}_key"), getattr(row, f"{side}_caption")
            if pd.isna(key) or not key or key in seen:
                continue
            if not isinstance(caption, str) or not caption.strip():
                skipped += 1
                continue
            seen.add(key)
            if row.modality == "video":
                video = load_frames(storage, key)
                frames = [video[i] for i in _frame_indices(len(video), frames_per_video)]
                video_size = video_size or video.shape[1:3]
            elif row.modality == "image":
                frames = [decode_image(storage.read_bytes(key))]
            else:
                raise ValueError(f"unknown modality {row.modality!r} in the manifest")
            images, texts = out[row.split]
            images.extend(frames)
            texts.extend([caption.strip()] * len(frames))
    if skipped:
        log.warning("tiny CLIP pairs: %d files skipped for want of a caption", skipped)
    # One size for all: the videos' (raw_videos made them one size), else the most common.
    sizes = Counter(f.shape[:2] for images, _ in out.values() for f in images)
    size = video_size or (sizes.most_common(1)[0][0] if sizes else (0, 0))
    train_images, val_images = _stack(out["train"][0], size), _stack(out["val"][0], size)
    return train_images, out["train"][1], val_images, out["val"][1]
