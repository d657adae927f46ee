"""Edit-GRPO rewards against a tiny CLIP built here (nothing is downloaded): each reward
checked against a computation by hand straight from ``CLIPModel``, batching, weights,
lineage, the tiny CLIP's contrastive training on a synthetic colour world, and the
(frame, caption) pairs taken from a ``qc_dataset`` manifest."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPModel, CLIPProcessor

from tests.sft_fixtures import write_tiny_dataset
from viva_pipelines.embedded.clip import (
    build_tiny_clip,
    contrastive_loss,
    dataset_pairs,
    train_tiny_clip,
)
from viva_pipelines.masks.shard import load_frames
from viva_pipelines.rewards.clip_rewards import (
    ClipScorer,
    edit_rewards,
    instruction_following,
)
from viva_pipelines.storage import Storage
from viva_pipelines.train.config import RewardWeights

CAPTIONS = ["a red square", "a blue square", "a green circle"]
TEXTS = [*CAPTIONS, "a red square on a grey floor", "an empty room", "a yellow star"]
G, T = 3, 4


def frames(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def source_preservation(scorer, source, edited):
    return _terms(scorer, scorer, source, edited, "a video", "a video")["preservation"]


def pickscore(scorer, edited, target_captions):
    edited = np.asarray(edited)
    frames = edited[0] if edited.ndim == 5 else edited
    return _terms(scorer, scorer, frames, edited, "a video", target_captions)["pickscore"]


def _terms(clip, pick, source, edited, source_captions, target_captions):
    return edit_rewards(
        clip, pick, source, edited, source_captions, target_captions, RewardWeights()
    )


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP with random weights: the rewards' arithmetic does not need trained ones."""
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny", TEXTS, seed=0)


@pytest.fixture(scope="module")
def scorer(clip_dir: Path) -> ClipScorer:
    # batch_size 5: G x T = 12 frames go through the image tower in three chunks.
    return ClipScorer(clip_dir, batch_size=5)


class Reference:
    """Embeddings computed directly from ``CLIPModel`` and the standard ``CLIPProcessor``,
    one item at a time, with none of the scorer's code."""

    def __init__(self, model_dir: Path) -> None:
        self.model = CLIPModel.from_pretrained(model_dir).eval().requires_grad_(False)
        self.processor = CLIPProcessor.from_pretrained(model_dir)

    @torch.no_grad()
    def image(self, frame: np.ndarray) -> torch.Tensor:
        pixels = self.processor(images=[frame], return_tensors="pt")["pixel_values"]
        out = self.model.get_image_features(pixel_values=pixels).pooler_output[0]
        return out / out.norm()

    @torch.no_grad()
    def text(self, caption: str) -> torch.Tensor:
        inputs = self.processor(text=[caption], return_tensors="pt")
        out = self.model.get_text_features(**inputs).pooler_output[0]
        return out / out.norm()

    def frame_mean_cosine(self, video: np.ndarray, caption: str) -> float:
        text = self.text(caption)
        return float(np.mean([float(self.image(f) @ text) for f in video]))


@pytest.fixture(scope="module")
def reference(clip_dir: Path) -> Reference:
    return Reference(clip_dir)


@pytest.fixture(scope="module")
def videos() -> tuple[np.ndarray, np.ndarray]:
    """A source video ``[T, 24, 40, 3]`` and G edits of another size ``[G, T, 20, 20, 3]``."""
    return frames(1, (T, 24, 40)), frames(2, (G, T, 20, 20))


# -- embeddings -----------------------------------------------------------------------------------


def test_embeddings_match_the_model_and_are_normalised(
    scorer: ClipScorer, reference: Reference
) -> None:
    images = frames(3, (7, 30, 50))
    embedded = scorer.image_embeddings(images)
    assert embedded.shape == (7, 32) and embedded.dtype == torch.float32
    torch.testing.assert_close(embedded.norm(dim=1), torch.ones(7))
    expected = torch.stack([reference.image(f) for f in images])
    torch.testing.assert_close(embedded, expected, atol=1e-5, rtol=0)
    # Torch uint8 frames are the same frames.
    torch.testing.assert_close(scorer.image_embeddings(torch.from_numpy(images)), embedded)

    texts = [*CAPTIONS, "A much longer caption about a red square near the left edge"]
    embedded = scorer.text_embeddings(texts)
    expected = torch.stack([reference.text(t) for t in texts])
    torch.testing.assert_close(embedded, expected, atol=1e-5, rtol=0)
    assert scorer.logit_scale == pytest.approx(float(reference.model.logit_scale.exp()))


def test_frames_are_checked(scorer: ClipScorer, videos: tuple[np.ndarray, np.ndarray]) -> None:
    _, edited = videos
    with pytest.raises(ValueError, match="uint8"):
        scorer.image_embeddings(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[G, T, H, W, 3\]"):
        instruction_following(scorer, edited[0], CAPTIONS[0], CAPTIONS[1])
    with pytest.raises(ValueError, match="target_captions"):
        pickscore(scorer, edited, CAPTIONS[:2])
    with pytest.raises(ValueError, match="frames"):
        source_preservation(scorer, edited[0, :2], edited)


# -- each reward by hand --------------------------------------------------------------------------


def test_instruction_following_by_hand(
    scorer: ClipScorer, reference: Reference, videos: tuple[np.ndarray, np.ndarray]
) -> None:
    _, edited = videos
    source_caption = "a red square on a grey floor"
    got = instruction_following(scorer, edited, CAPTIONS, source_caption)
    expected = [
        reference.frame_mean_cosine(edited[g], CAPTIONS[g])
        - reference.frame_mean_cosine(edited[g], source_caption)
        for g in range(G)
    ]
    assert got.shape == (G,) and got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-5, rtol=0)
    # Target equal to source: nothing to follow.
    same = instruction_following(scorer, edited, source_caption, source_caption)
    torch.testing.assert_close(same, torch.zeros(G))


def test_pickscore_is_logit_scale_times_frame_mean_cosine(
    scorer: ClipScorer, reference: Reference, videos: tuple[np.ndarray, np.ndarray]
) -> None:
    _, edited = videos
    got = pickscore(scorer, edited, CAPTIONS)
    scale = float(reference.model.logit_scale.exp())
    expected = [scale * reference.frame_mean_cosine(edited[g], CAPTIONS[g]) for g in range(G)]
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-4, rtol=0)


def test_source_preservation_is_frame_paired(
    scorer: ClipScorer, reference: Reference, videos: tuple[np.ndarray, np.ndarray]
) -> None:
    source, edited = videos
    got = source_preservation(scorer, source, edited)
    expected = [
        np.mean(
            [float(reference.image(source[t]) @ reference.image(edited[g, t])) for t in range(T)]
        )
        for g in range(G)
    ]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=0)
    # One shared source [T, ...] is the same as the source repeated per candidate.
    repeated = np.repeat(source[None], G, axis=0)
    torch.testing.assert_close(source_preservation(scorer, repeated, edited), got)
    # An unedited candidate preserves everything.
    identical = source_preservation(scorer, source, source[None])
    torch.testing.assert_close(identical, torch.ones(1), atol=1e-5, rtol=0)
    # Pairing is by frame: the same frames in another order score lower.
    shuffled = source_preservation(scorer, source, source[None, ::-1])
    assert float(shuffled[0]) < 1 - 1e-3


def test_group_scored_together_equals_each_alone(
    scorer: ClipScorer, videos: tuple[np.ndarray, np.ndarray]
) -> None:
    source, edited = videos
    weights = RewardWeights()
    together = edit_rewards(scorer, scorer, source, edited, "a red square", CAPTIONS, weights)
    for g in range(G):
        alone = edit_rewards(
            scorer, scorer, source, edited[g : g + 1], "a red square", CAPTIONS[g], weights
        )
        for key, values in together.items():
            torch.testing.assert_close(alone[key], values[g : g + 1], atol=1e-5, rtol=0)


def test_edit_rewards_terms_and_weighted_total(
    scorer: ClipScorer, clip_dir: Path, videos: tuple[np.ndarray, np.ndarray]
) -> None:
    source, edited = videos
    pick = ClipScorer(clip_dir)  # another instance: the PickScore model's own forward
    weights = RewardWeights(instruction=2.0, preservation=0.5, pickscore=0.25)
    rewards = edit_rewards(scorer, pick, source, edited, "a red square", CAPTIONS, weights)
    assert set(rewards) == {"instruction", "preservation", "pickscore", "total"}
    assert all(v.shape == (G,) for v in rewards.values())
    torch.testing.assert_close(
        rewards["instruction"], instruction_following(scorer, edited, CAPTIONS, "a red square")
    )
    torch.testing.assert_close(rewards["preservation"], source_preservation(scorer, source, edited))
    torch.testing.assert_close(rewards["pickscore"], pickscore(pick, edited, CAPTIONS))
    total = (
        2.0 * rewards["instruction"] + 0.5 * rewards["preservation"] + 0.25 * rewards["pickscore"]
    )
    torch.testing.assert_close(rewards["total"], total)
    # pick is clip: one model for all three terms, same numbers.
    shared = edit_rewards(scorer, scorer, source, edited, "a red square", CAPTIONS, weights)
    for key in rewards:
        torch.testing.assert_close(shared[key], rewards[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"instruction": -1.0}, ValueError),
        ({"pickscore": float("nan")}, ValueError),
        ({"preservation": float("inf")}, ValueError),
        ({"instruction": 0.0, "preservation": 0.0, "pickscore": 0.0}, ValueError),
        ({"instruction": "1"}, ValueError),
        ({"instruction": True}, ValueError),
    ],
)
def test_reward_weights_are_validated(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        RewardWeights(**kwargs)


def test_reward_weights_defaults_and_zero_terms() -> None:
    # PickScore is a logit (~100 x a cosine) while R_IF and R_SP are cosines: weighted 0.01;
    # instruction following counts twice (docs/benchmark.md)
    assert RewardWeights() == RewardWeights(instruction=2.0, preservation=1.0, pickscore=0.01)
    assert RewardWeights(pickscore=0).pickscore == 0
    assert RewardWeights(instruction=3).instruction == 3.0  # a YAML integer is a number


# -- lineage and loading --------------------------------------------------------------------------


def test_identity_of_a_local_checkpoint(scorer: ClipScorer, clip_dir: Path) -> None:
    digest = hashlib.sha256((clip_dir / "model.safetensors").read_bytes()).hexdigest()
    assert scorer.identity == {
        "name_or_path": str(clip_dir),
        "revision": None,
        "sha256": digest,
        "processor": str(clip_dir),
    }


def test_processor_from_another_directory(
    scorer: ClipScorer, clip_dir: Path, tmp_path: Path, videos: tuple[np.ndarray, np.ndarray]
) -> None:
    """PickScore_v1 ships only weights; its tokenizer and image processor come from CLIP-H."""
    weights_only = tmp_path / "weights"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(clip_dir / name, weights_only / name)
    with pytest.raises(OSError, match="cannot load"):
        ClipScorer(weights_only)
    pick = ClipScorer(weights_only, processor=clip_dir)
    assert pick.identity["processor"] == str(clip_dir)
    assert pick.identity["sha256"] == scorer.identity["sha256"]
    _, edited = videos
    torch.testing.assert_close(
        pickscore(pick, edited, CAPTIONS), pickscore(scorer, edited, CAPTIONS)
    )
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ClipScorer(weights_only, processor=tmp_path / "nowhere")


def test_missing_model_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "clip"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        ClipScorer(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        ClipScorer(empty)


def test_contrastive_loss_is_clips_for_distinct_captions(clip_dir: Path) -> None:
    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(clip_dir)
    inputs = processor(
        text=CAPTIONS, images=list(frames(4, (3, 32, 32))), return_tensors="pt", padding=True
    )
    with torch.no_grad():
        out = model(**inputs, return_loss=True)
        ours = contrastive_loss(
            out.image_embeds, out.text_embeds, torch.arange(3), model.logit_scale.exp()
        )
    torch.testing.assert_close(ours, out.loss)


# -- the tiny CLIP, trained -----------------------------------------------------------------------

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 190, 30)}
SHAPE_OF = {"red": "square", "blue": "square", "green": "circle"}


def draw(rng: np.random.Generator, colour: str, size: int = 32) -> np.ndarray:
    """A coloured square or circle (as the caption says) at a random place on noise."""
    image = (rng.integers(0, 256, (size, size, 3)) // 2 + 40).astype(np.uint8)
    r = int(rng.integers(7, 11))
    cy, cx = rng.integers(r, size - r, 2)
    yy, xx = np.mgrid[:size, :size]
    if SHAPE_OF[colour] == "square":
        inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    else:
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    image[inside] = COLOURS[colour]
    return image


def colour_world(count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    colours = [list(COLOURS)[i % 3] for i in range(count)]
    return np.stack([draw(rng, c) for c in colours]), [f"a {c} {SHAPE_OF[c]}" for c in colours]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    images, captions = colour_world(96, seed=0)
    val_images, val_captions = colour_world(30, seed=1)
    model_dir = build_tiny_clip(tmp_path_factory.mktemp("trained") / "clip", captions, seed=0)
    metrics = train_tiny_clip(
        model_dir, images, captions, val_images=val_images, val_captions=val_captions, steps=150
    )
    return model_dir, metrics


@pytest.mark.slow
def test_training_learns_the_colour_world(trained: tuple[Path, dict]) -> None:
    _, metrics = trained
    assert metrics["train_loss_last"] < 0.5 * metrics["train_loss_first"]
    assert metrics["val_retrieval_chance"] == pytest.approx(1 / 3)
    assert metrics["val_retrieval_accuracy"] >= 0.9
    assert metrics["val_image_to_text_accuracy"] >= 0.8
    assert metrics["val_pairs"] == 30 and metrics["train_pairs"] == 96


@pytest.mark.slow
def test_trained_clip_rewards_the_instructed_colour(trained: tuple[Path, dict]) -> None:
    model_dir, _ = trained
    scorer = ClipScorer(model_dir)  # the weights saved back by training
    rng = np.random.default_rng(7)
    red = np.stack([draw(rng, "red") for _ in range(T)])[None]
    blue = np.stack([draw(rng, "blue") for _ in range(T)])[None]
    assert float(instruction_following(scorer, red, "a red square", "a blue square")[0]) > 0
    assert float(instruction_following(scorer, blue, "a red square", "a blue square")[0]) < 0
    edits = np.concatenate([red, blue])
    score = pickscore(scorer, edits, "a red square")
    assert float(score[0]) > float(score[1])


def test_build_and_training_are_deterministic(tmp_path: Path) -> None:
    images, captions = colour_world(24, seed=3)
    first = build_tiny_clip(tmp_path / "a", captions, seed=1)
    second = build_tiny_clip(tmp_path / "b", captions, seed=1)
    other = shutil.copytree(first, tmp_path / "c")

    def weights(path: Path) -> str:
        return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()

    assert weights(first) == weights(second)
    kwargs = {"steps": 8, "batch_size": 8}
    runs = [train_tiny_clip(d, images, captions, seed=0, **kwargs) for d in (first, second)]
    train_tiny_clip(other, images, captions, seed=1, **kwargs)
    assert runs[0] == runs[1] and weights(first) == weights(second)
    assert weights(other) != weights(first)
    assert runs[0]["val_retrieval_accuracy"] is None


# -- training pairs from the dataset --------------------------------------------------------------


def test_dataset_pairs_from_a_manifest(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "root"))
    manifest = write_tiny_dataset(storage, videos=4)
    manifest["source_caption"] = "a red square on a gradient"
    manifest["target_caption"] = np.where(
        manifest["edit_type"] == "remove", "an empty gradient", "a blue square on a gradient"
    )
    # A rejected pair contributes nothing; a pair without a target caption only its source.
    manifest.loc[manifest["sample_id"] == "v0-color", "status"] = "rejected"
    manifest.loc[manifest["sample_id"] == "v2-remove-image", "target_caption"] = None
    storage.write_parquet("qc_dataset/manifest.parquet", manifest)
    manifest = storage.read_parquet("qc_dataset/manifest.parquet")

    train_images, train_captions, val_images, val_captions = dataset_pairs(
        storage, manifest, frames_per_video=2
    )
    # Train (v0, v2): 2 source videos (each shared by its edits) x 2 frames, 3 target videos
    # x 2 frames, 4 source PNGs, 3 target PNGs.
    assert train_images.shape == (4 + 6 + 4 + 3, 32, 32, 3) and train_images.dtype == np.uint8
    assert len(train_captions) == len(train_images)
    assert train_captions.count("a red square on a gradient") == 4 + 4
    assert train_captions.count("an empty gradient") == 4 + 1
    assert train_captions.count("a blue square on a gradient") == 2 + 2
    # Val (v1, v3): 2 x 2 source frames, 4 x 2 target frames, 4 + 4 PNGs.
    assert val_images.shape == (4 + 8 + 8, 32, 32, 3) and len(val_captions) == 20
    # The first and last frames of a source video, in order, with its caption.
    video = load_frames(storage, "raw_videos/shard-000000/v0.mp4")
    np.testing.assert_array_equal(train_images[0], video[0])
    np.testing.assert_array_equal(train_images[1], video[-1])
    assert train_captions[:2] == ["a red square on a gradient"] * 2


def test_dataset_pairs_fit_an_image_set_of_another_size_to_the_videos(tmp_path: Path) -> None:
    """An external image pair need not have the videos' size: its images are fitted (area
    scaling, centre crop) to it, as training fits every sample."""
    import io

    from PIL import Image

    from viva_pipelines.video.normalise import NormaliseSpec, fit_frame

    storage = Storage(str(tmp_path / "root"))
    manifest = write_tiny_dataset(storage, videos=2)
    manifest["source_caption"], manifest["target_caption"] = "a red square", "a blue square"
    wide = np.zeros((48, 96, 3), np.uint8)
    wide[:, 24:72] = (200, 40, 40)  # a square in the middle, bars either side
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    storage.write_bytes("qc_dataset/external/x/source.png", buffer.getvalue())
    external = {**manifest.iloc[0].to_dict(), "sample_id": "external-x", "modality": "image"}
    external.update(source_key="qc_dataset/external/x/source.png", target_key=None, split="train")
    manifest = manifest.assign(split="train")
    manifest.loc[len(manifest)] = external

    train_images, _, _, _ = dataset_pairs(storage, manifest, frames_per_video=2)
    assert train_images.shape[1:] == (32, 32, 3)
    spec = NormaliseSpec(width=32, height=32, fps=1, max_frames=1)
    assert any(np.array_equal(image, fit_frame(wide, spec)) for image in train_images)
    assert (fit_frame(wide, spec) == (200, 40, 40)).all()  # the centre crop keeps the square
