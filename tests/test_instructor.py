"""The VLM instructor against a tiny random LLaVA built here (nothing is downloaded): prompt
construction, image-token expansion, padding, cropping, layer choice, determinism, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from viva_pipelines.embedded.instructor import (
    build_tiny_instructor,
    ensure_tiny_instructor,
    instruction_vocabulary,
)
from viva_pipelines.model.instructor import (
    PROMPTS_DIR,
    Instructor,
    InstructorConfig,
    PromptTemplate,
    load_prompt_template,
    pad_to_square,
)

#: The tiny model's geometry (build_tiny_instructor defaults): 32 px images in 8 px patches.
IMAGE_TOKENS = (32 // 8) ** 2
HIDDEN = 64
SHORT = "Remove the red circle."
LONG = "Replace the blue square with a yellow star, then render the video as a pencil sketch."


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_instructor(tmp_path_factory.mktemp("instructor") / "tiny", _vocabulary())


def _vocabulary() -> list[str]:
    return instruction_vocabulary(num_scenes=16)


def _make(tiny_dir: Path, **overrides: object) -> Instructor:
    return Instructor(InstructorConfig(model=str(tiny_dir), **overrides))


@pytest.fixture(scope="module")
def instructor(tiny_dir: Path) -> Instructor:
    return _make(tiny_dir)


def frame(seed: int, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def real_rows(out) -> list[torch.Tensor]:
    """Each item's real tokens, padding dropped."""
    return [out.tokens[i, : int(n)] for i, n in enumerate(out.attention_mask.sum(1))]


# -- shapes and image tokens ----------------------------------------------------------------------


def test_output_shapes_dtypes_and_right_padding(instructor: Instructor) -> None:
    out = instructor.encode(
        [SHORT, LONG, "Add the object from the reference image."],
        [frame(0), frame(1, (40, 40)), frame(2)],
        [None, None, frame(3, (20, 30))],
    )
    batch, length, dim = out.tokens.shape
    assert (batch, dim) == (3, HIDDEN) == (3, instructor.hidden_size)
    assert out.tokens.dtype == torch.float32 and out.tokens.device.type == "cpu"
    assert out.attention_mask.dtype == torch.int64
    assert out.attention_mask.shape == (3, length)
    mask = out.attention_mask
    assert set(mask.unique().tolist()) == {0, 1}
    assert bool((mask[:, :-1] >= mask[:, 1:]).all()), "not ones then zeros"
    lengths = mask.sum(1)
    assert int(lengths.max()) == length  # padded to the longest item, not beyond
    # The reference item has 16 more image tokens plus its introduction; the long instruction
    # is longer than the short one.
    assert lengths[2] > lengths[0] + IMAGE_TOKENS and lengths[1] > lengths[0]
    assert bool((out.tokens[mask == 0] == 0).all()), "padding is zeroed"
    assert bool((out.tokens[mask == 1].abs().sum(-1) > 0).all())
    assert torch.equal(out.lengths, lengths)


def test_each_image_expands_to_the_models_image_token_count(instructor: Instructor) -> None:
    assert instructor.image_token_count == IMAGE_TOKENS
    inputs = instructor.prepare_inputs([SHORT, SHORT], [frame(0), frame(1)], [None, frame(2)])
    per_row = (inputs["input_ids"] == instructor.image_token_id).sum(1).tolist()
    assert per_row == [IMAGE_TOKENS, 2 * IMAGE_TOKENS]
    # Images in prompt order: item 0's frame, item 1's frame, item 1's reference.
    assert inputs["pixel_values"].shape == (3, 3, 32, 32)
    # The tokens match what the vision tower actually yields per image...
    with torch.no_grad():
        features = instructor.model.get_image_features(
            pixel_values=inputs["pixel_values"],
            vision_feature_layer=instructor.model.config.vision_feature_layer,
            vision_feature_select_strategy=instructor.model.config.vision_feature_select_strategy,
        ).pooler_output
    assert [f.shape for f in features] == [(IMAGE_TOKENS, HIDDEN)] * 3
    # ... and the image tokens of one image are contiguous.
    row = inputs["input_ids"][0].tolist()
    start = row.index(instructor.image_token_id)
    assert row[start : start + IMAGE_TOKENS] == [instructor.image_token_id] * IMAGE_TOKENS


def test_batching_and_padding_do_not_change_real_tokens(instructor: Instructor) -> None:
    alone = instructor.encode([SHORT], [frame(0)])
    long_alone = instructor.encode([LONG], [frame(1)], [frame(2)])
    batch = instructor.encode([SHORT, LONG], [frame(0), frame(1)], [None, frame(2)])
    assert batch.attention_mask[0].sum() < batch.attention_mask[1].sum()  # item 0 is padded
    rows = real_rows(batch)
    torch.testing.assert_close(rows[0], real_rows(alone)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(rows[1], real_rows(long_alone)[0], atol=1e-5, rtol=0)


# -- what the tokens depend on ------------------------------------------------------------------


def test_same_inputs_same_tokens_different_instructions_different_tokens(
    instructor: Instructor,
) -> None:
    first = instructor.encode([SHORT, LONG], [frame(0), frame(0)])
    again = instructor.encode([SHORT, LONG], [frame(0), frame(0)])
    assert torch.equal(first.tokens, again.tokens)
    assert torch.equal(first.attention_mask, again.attention_mask)
    other = instructor.encode(["Remove the blue circle."], [frame(0)])
    a, b = real_rows(first)[0], real_rows(other)[0]
    assert a.shape == b.shape  # one word swapped for another of the same length in tokens
    assert not torch.allclose(a, b, atol=1e-4)


def test_first_frame_and_reference_change_the_tokens(instructor: Instructor) -> None:
    base = real_rows(instructor.encode([SHORT], [frame(0)]))[0]
    other_frame = real_rows(instructor.encode([SHORT], [frame(1)]))[0]
    assert base.shape == other_frame.shape
    assert not torch.allclose(base, other_frame, atol=1e-4)
    # The instruction's own tokens (after the image) see the image too.
    assert not torch.allclose(base[-3:], other_frame[-3:], atol=1e-4)
    with_ref = real_rows(instructor.encode([SHORT], [frame(0)], [frame(2)]))[0]
    other_ref = real_rows(instructor.encode([SHORT], [frame(0)], [frame(3)]))[0]
    assert with_ref.shape[0] > base.shape[0] + IMAGE_TOKENS
    assert not torch.allclose(with_ref[-3:], other_ref[-3:], atol=1e-4)


def test_a_picture_three_pixels_tall_is_read_as_height_width_channels(instructor: Instructor):
    """[3, W, 3] could be channels first; the instructor's images are always [H, W, 3]: its
    pixels are those of the same picture scaled up first (nearest, so the same colours)."""
    ramp = np.linspace(0, 255, 12)
    thin = np.broadcast_to(np.stack([ramp, 255 - ramp, np.full(12, 128)], -1), (3, 12, 3))
    thin = thin.round().astype(np.uint8)
    scaled = np.repeat(np.repeat(thin, 8, axis=0), 8, axis=1)
    pixels = instructor.prepare_inputs([SHORT], [thin])["pixel_values"]
    reference = instructor.prepare_inputs([SHORT], [scaled])["pixel_values"]
    assert pixels.shape == reference.shape
    assert (pixels - reference).abs().mean() < 0.12  # 0.05; the axes swapped: 0.26


def test_pad_to_square_centres_the_picture_on_the_fill():
    wide = frame(0, (2, 6))
    square = pad_to_square(wide, (1, 2, 3))
    assert square.shape == (6, 6, 3)
    np.testing.assert_array_equal(square[2:4], wide)
    assert (square[:2] == (1, 2, 3)).all() and (square[4:] == (1, 2, 3)).all()
    tall = frame(1, (5, 2))
    np.testing.assert_array_equal(pad_to_square(tall, (0, 0, 0))[:, 1:3], tall)
    same = frame(2, (4, 4))
    assert pad_to_square(same, (0, 0, 0)) is same


def test_a_padded_frame_shows_the_instructor_its_sides(tiny_dir: Path, instructor: Instructor):
    """The image processor keeps the centre square of a wide frame: what happens at its left
    edge is out of sight unless the frame is padded to a square first."""
    padded = _make(tiny_dir, pad_to_square=True)
    seen = frame(0)  # 48 x 64: the processor's crop drops about 8 columns on each side
    changed = seen.copy()
    changed[:, :4] = 255 - changed[:, :4]
    for reader, sees_the_edge in ((instructor, False), (padded, True)):
        before = real_rows(reader.encode([SHORT], [seen]))[0]
        after = real_rows(reader.encode([SHORT], [changed]))[0]
        assert torch.allclose(before, after, atol=1e-6) is not sees_the_edge


def test_text_only_has_no_images_and_differs(tiny_dir: Path, instructor: Instructor) -> None:
    text = _make(tiny_dir, text_only=True)
    inputs = text.prepare_inputs([SHORT, LONG])
    assert "pixel_values" not in inputs
    assert int((inputs["input_ids"] == text.image_token_id).sum()) == 0
    out = text.encode([SHORT, LONG])  # no first frames needed
    assert out.tokens.shape[0] == 2 and out.tokens.shape[2] == HIDDEN
    text_row = real_rows(out)[0]
    image_row = real_rows(instructor.encode([SHORT], [frame(0)]))[0]
    assert text_row.shape[0] < image_row.shape[0] - IMAGE_TOKENS
    # Both prompts end with the same "Instruction: ...<|eot_id|>" tokens; only the multimodal
    # ones have seen an image.
    n = 6
    ids_text = text.prepare_inputs([SHORT])["input_ids"][0, -n:]
    ids_image = instructor.prepare_inputs([SHORT], [frame(0)])["input_ids"][0, -n:]
    assert torch.equal(ids_text, ids_image)
    assert not torch.allclose(text_row[-n:], image_row[-n:], atol=1e-4)


def test_crop_template_drops_exactly_the_system_prefix(
    tiny_dir: Path, instructor: Instructor
) -> None:
    full = _make(tiny_dir, crop_template=False)
    frames, refs = [frame(0), frame(1)], [frame(2), None]
    cropped = instructor.encode([SHORT, LONG], frames, refs)
    uncropped = full.encode([SHORT, LONG], frames, refs)
    prefix = instructor.prefix_length
    assert prefix == len(instructor.tokenizer(instructor.template.prefix)["input_ids"]) > 10
    assert uncropped.tokens.shape[1] - cropped.tokens.shape[1] == prefix
    assert torch.equal(cropped.tokens, uncropped.tokens[:, prefix:])
    assert torch.equal(cropped.attention_mask, uncropped.attention_mask[:, prefix:])
    # The output starts at the user turn's content: the source frame's introduction.
    ids = instructor.prepare_inputs([SHORT], [frame(0)])["input_ids"][0]
    assert instructor.tokenizer.decode(ids[prefix : prefix + 3]).startswith("Source")
    assert "system" in instructor.tokenizer.decode(ids[:prefix])


def test_hidden_layer_selects_a_layer(tiny_dir: Path, instructor: Instructor) -> None:
    last = instructor.encode([SHORT], [frame(0)])
    penultimate = _make(tiny_dir, hidden_layer=-2).encode([SHORT], [frame(0)])
    assert last.tokens.shape == penultimate.tokens.shape
    assert not torch.allclose(last.tokens, penultimate.tokens, atol=1e-3)
    # -1 is the language model's final (normed) output, as the model computes it.
    inputs = instructor.prepare_inputs([SHORT], [frame(0)])
    with torch.no_grad():
        final = instructor.model.model(**inputs).last_hidden_state
    torch.testing.assert_close(last.tokens[0], final[0, instructor.prefix_length :])
    with pytest.raises(ValueError, match="hidden_layer 3 is out of range"):
        _make(tiny_dir, hidden_layer=3)  # 2 layers: 3 hidden states


def test_encode_unconditional(tiny_dir: Path, instructor: Instructor) -> None:
    out = instructor.encode_unconditional(4)
    assert out.tokens.shape[0] == 4 and out.tokens.shape[2] == HIDDEN
    assert out.attention_mask.shape == out.tokens.shape[:2]
    assert bool((out.attention_mask == 1).all())
    black = instructor.encode([""], [np.zeros((256, 256, 3), np.uint8)])
    for i in range(4):
        assert torch.equal(out.tokens[i], black.tokens[0])
    # Shorter than any real instruction, and not what an instruction reads as.
    real = instructor.encode([SHORT], [np.zeros((256, 256, 3), np.uint8)])
    assert out.tokens.shape[1] < real.tokens.shape[1]
    out.tokens.zero_()  # the cache must not be the caller's tensor
    assert torch.equal(instructor.encode_unconditional(1).tokens[0], black.tokens[0])
    text = _make(tiny_dir, text_only=True).encode_unconditional(2)
    assert text.tokens.shape[0] == 2 and text.tokens.shape[1] < out.tokens.shape[1]


def test_frozen_and_no_graph_but_usable_downstream(instructor: Instructor) -> None:
    assert not any(p.requires_grad for p in instructor.model.parameters())
    assert not instructor.model.training
    out = instructor.encode([SHORT], [frame(0)])
    assert out.tokens.requires_grad is False and out.tokens.grad_fn is None
    # Not inference tensors: a trainable layer reading them can backpropagate.
    refiner = torch.nn.Linear(HIDDEN, 8)
    refiner(out.tokens).square().mean().backward()
    assert refiner.weight.grad is not None and refiner.weight.grad.abs().sum() > 0


def test_long_instructions_are_cut_to_max_length(tiny_dir: Path, instructor: Instructor) -> None:
    # The longest template (with a reference) must leave room for an instruction.
    template_only = len(
        instructor._tokenize(
            instructor.template.render("", instructor.image_token, source=True, reference=True)
        )
    )
    max_length = template_only + 10
    short = _make(tiny_dir, max_length=max_length)
    long = " ".join([LONG] * 20)
    inputs = short.prepare_inputs([long, SHORT], [frame(0), frame(1)])
    text_tokens = inputs["attention_mask"].sum(1) - (IMAGE_TOKENS - 1)
    assert int(text_tokens[0]) <= max_length
    assert int(text_tokens[0]) >= max_length - 3  # cut, not emptied
    # A short instruction is untouched, and the cut prompt still ends the user turn.
    assert torch.equal(
        inputs["input_ids"][1, : int(inputs["attention_mask"][1].sum())],
        instructor.prepare_inputs([SHORT], [frame(1)])["input_ids"][0],
    )
    last = inputs["input_ids"][0, int(inputs["attention_mask"][0].sum()) - 1]
    assert short.tokenizer.decode(last) == "<|eot_id|>"
    with pytest.raises(ValueError, match="leaving no room"):
        _make(tiny_dir, max_length=template_only)


# -- errors -----------------------------------------------------------------------------------


def test_missing_model_dir_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        Instructor(InstructorConfig(model=str(missing)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{empty} has no config.json")):
        Instructor(InstructorConfig(model=str(empty)))
    with pytest.raises(OSError, match="cannot load the instructor model 'nobody/nothing'"):
        Instructor(InstructorConfig(model="nobody/nothing"))  # a hub id; offline in tests


def test_missing_first_frame_names_the_item(instructor: Instructor) -> None:
    with pytest.raises(ValueError, match="item 1: missing first frame"):
        instructor.encode([SHORT, LONG], [frame(0), None])
    with pytest.raises(ValueError, match="first_frames is required"):
        instructor.encode([SHORT])
    with pytest.raises(ValueError, match="2 first frames for 1 instructions"):
        instructor.encode([SHORT], [frame(0), frame(1)])
    with pytest.raises(ValueError, match="item 0: first frame: expected a uint8"):
        instructor.encode([SHORT], [frame(0).astype(np.float32)])
    with pytest.raises(ValueError, match="item 0: the prompt has 2 image tokens"):
        instructor.encode([f"Remove {instructor.image_token} the circle."], [frame(0)])


def test_prompt_template_loading_and_parsing(tmp_path: Path, tiny_dir: Path) -> None:
    text = load_prompt_template("instructor.md")
    assert text == (PROMPTS_DIR / "instructor.md").read_text()
    template = PromptTemplate.parse(text)
    rendered = template.render("Do {reference} it.", "<image>", source=True, reference=False)
    assert rendered.startswith(template.prefix)
    assert rendered.count("<image>") == 1 and "Do {reference} it." in rendered
    both = template.render("x", "<image>", source=True, reference=True)
    assert both.index("Source") < both.index("Reference") < both.index("Instruction: x")
    assert "<image>" not in template.render("x", "<image>", source=False, reference=False)

    missing = tmp_path / "nope.md"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_prompt_template(missing)
    with pytest.raises(FileNotFoundError, match=re.escape("nope.md")):
        _make(tiny_dir, prompt_template=str(missing))
    broken = text.replace("{reference}", "")
    with pytest.raises(ValueError, match=r"\{reference\} exactly once"):
        PromptTemplate.parse(broken)
    with pytest.raises(ValueError, match="front matter"):
        PromptTemplate.parse(text.split("---", 2)[2])


# -- the tiny model itself -----------------------------------------------------------------------


def test_build_tiny_instructor_is_deterministic(tmp_path: Path, tiny_dir: Path) -> None:
    from safetensors.torch import load_file

    texts = _vocabulary()
    again = build_tiny_instructor(tmp_path / "again", texts, seed=0)
    other = build_tiny_instructor(tmp_path / "other", texts, seed=1)
    weights = load_file(tiny_dir / "model.safetensors")
    same = load_file(again / "model.safetensors")
    different = load_file(other / "model.safetensors")
    assert weights.keys() == same.keys() == different.keys()
    assert all(torch.equal(weights[k], same[k]) for k in weights)
    assert not all(torch.equal(weights[k], different[k]) for k in weights)
    vocab = json.loads((tiny_dir / "tokenizer.json").read_text())["model"]
    assert vocab == json.loads((again / "tokenizer.json").read_text())["model"]
    assert sum(t.numel() for t in weights.values()) < 1_000_000


def test_a_build_of_other_sizes_is_never_taken_for_the_demo_instructor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = ensure_tiny_instructor(tmp_path)
    assert ensure_tiny_instructor(tmp_path) == built  # built once, then found
    sizes = dict(build_tiny_instructor.__kwdefaults__)
    monkeypatch.setattr(build_tiny_instructor, "__kwdefaults__", {**sizes, "hidden_size": 32})
    resized = ensure_tiny_instructor(tmp_path)
    assert resized != built
    assert json.loads((resized / "config.json").read_text())["text_config"]["hidden_size"] == 32
    assert json.loads((built / "config.json").read_text())["text_config"]["hidden_size"] == 64


def test_tiny_tokenizer_knows_the_demo_vocabulary(instructor: Instructor) -> None:
    texts = _vocabulary()
    assert "Remove the red circle." in texts and "Make a cat appear at the bottom left." in texts
    assert any("astronaut helmet" in t for t in texts)
    assert any(t.startswith("Render the video as a pencil sketch") for t in texts)
    tokenizer = instructor.tokenizer
    ids = tokenizer(SHORT, add_special_tokens=False)["input_ids"]
    assert len(ids) <= 6  # trained merges, not bytes
    odd = "Ünïcødé ✓ and an unseen word: zyxwvut"
    assert tokenizer.decode(tokenizer(odd, add_special_tokens=False)["input_ids"]) == odd
