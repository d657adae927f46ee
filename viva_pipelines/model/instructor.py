"""The instructor: a frozen vision-language model whose hidden states condition the editor.

VIVA conditions its video diffusion transformer not on a text encoder but on a VLM that has
*seen* the source video (its first frame) and, for reference-guided edits, the reference
image: the hidden states of a LLaVA model at one layer, over the prompt's tokens, are the
condition tokens. The VLM stays frozen; a trainable token refiner in the diffusion model learns
to read them.

The prompt comes from a template file under ``assets/prompts/`` (see ``instructor.md``): a
system prefix, then a user turn with an image token for the first frame, optionally one for
the reference, and the instruction. Each image token is expanded here to exactly as many
tokens as the vision tower yields features, so the same code serves any
``LlavaForConditionalGeneration`` checkpoint, whatever its processor configuration says.
``text_only`` drops the images (the paper's plain text-encoder baseline); ``crop_template``
drops the system prefix, which is the same for every item and so carries no information.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from viva_pipelines.model.sources import dtype_of, local_model_dir
from viva_pipelines.settings import PACKAGE_DIR

log = logging.getLogger(__name__)

#: Where prompt templates named by file name live: the repository's ``assets/prompts/``.
PROMPTS_DIR = PACKAGE_DIR.parent / "assets" / "prompts"

#: Placeholders of a template's prompt body, each required exactly once.
_BODY_FIELDS = ("source", "reference", "instruction")
_BODY_PLACEHOLDER = re.compile(r"\{(source|reference|instruction)\}")
_IMAGE_PLACEHOLDER = "{image}"


@dataclass(frozen=True)
class InstructorConfig:
    """What to load and how to read it.

    ``model``: a local directory or hub id holding a ``LlavaForConditionalGeneration`` with its
    tokenizer and image processor. ``prompt_template``: a file name under ``assets/prompts/``
    or an absolute path. ``hidden_layer``: index into the language model's hidden states
    (``0`` the embeddings, ``-1`` the final, normed output; HunyuanVideo reads ``-3``).
    ``text_only``: no images at all. ``pad_to_square``: pad each image to a square before the
    image processor (:func:`pad_to_square`), so that its centre crop keeps the whole picture
    (off: the processor's own resize and centre crop). ``crop_template``: leave the system
    prefix out of the output. ``max_length``: text tokens, counting each image as one token
    (before expansion); longer instructions are cut to fit. ``dtype``: the model's weights
    (float32, bfloat16, float16); the output is float32 either way.
    """

    model: str
    prompt_template: str = "instructor.md"
    hidden_layer: int = -1
    text_only: bool = False
    pad_to_square: bool = False
    crop_template: bool = True
    max_length: int = 256
    device: str = "cpu"
    dtype: str = "float32"


@dataclass
class InstructorOutput:
    """Condition tokens. ``tokens``: ``float32 [B, L, D]``, right-padded, zeros at padding.
    ``attention_mask``: ``int64 [B, L]``, 1 for real tokens then 0 for padding."""

    tokens: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """``int64 [B]``: real tokens per item."""
        return self.attention_mask.sum(dim=1)


def pad_to_square(image: np.ndarray, fill: Sequence[int]) -> np.ndarray:
    """``uint8 [H, W, 3]`` -> ``[S, S, 3]`` with ``S = max(H, W)``: the picture centred on a
    ``fill`` background (LLaVA's ``expand2square``, what LLaVA models are trained on). A CLIP
    image processor resizes the short side and crops the centre square, which would cut the
    sides off a wide frame: an object at its left or right would be out of the instructor's
    sight, and "on the left" would not mean the left third of what it sees."""
    height, width = image.shape[:2]
    if height == width:
        return image
    side = max(height, width)
    square = np.empty((side, side, 3), np.uint8)
    square[:] = np.asarray(fill, np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = image
    return square


# -- prompt template --------------------------------------------------------------------------


def resolve_prompt_template(name_or_path: str | os.PathLike[str]) -> Path:
    """The template's path: absolute paths as given, anything else under :data:`PROMPTS_DIR`."""
    path = Path(name_or_path).expanduser()
    return path if path.is_absolute() else PROMPTS_DIR / path


def load_prompt_template(name_or_path: str | os.PathLike[str]) -> str:
    """The raw text of a prompt template (a file name under ``assets/prompts/`` or an absolute
    path). A missing file fails here, naming the path looked at, not at the first encode."""
    path = resolve_prompt_template(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"instructor prompt template not found: {path}")
    return path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class PromptTemplate:
    """A parsed template: ``body`` with ``{source}``, ``{reference}`` and ``{instruction}``;
    ``source`` / ``reference``: how each image is introduced, with ``{image}`` where it goes.

    Kept separate from the tokenizer so a template can be checked (and rendered in a test)
    without a model; the instructor fills ``{image}`` with its model's image token."""

    body: str
    source: str
    reference: str

    @classmethod
    def parse(cls, text: str, origin: str = "template") -> PromptTemplate:
        """Split YAML front matter (``source``, ``reference``) from the prompt body and check
        every placeholder is there exactly once, naming ``origin`` in any error."""
        lines = text.splitlines(keepends=True)
        if not lines or lines[0].strip() != "---":
            raise ValueError(f"{origin}: expected YAML front matter opened by a '---' line")
        try:
            end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
        except StopIteration:
            raise ValueError(f"{origin}: front matter is not closed by a '---' line") from None
        meta = yaml.safe_load("".join(lines[1:end])) or {}
        if not isinstance(meta, dict):
            raise ValueError(f"{origin}: front matter must be a mapping")
        snippets = {}
        for key in ("source", "reference"):
            snippet = meta.get(key)
            if not isinstance(snippet, str) or snippet.count(_IMAGE_PLACEHOLDER) != 1:
                raise ValueError(
                    f"{origin}: front matter {key!r} must be a string with {_IMAGE_PLACEHOLDER} "
                    "exactly once"
                )
            snippets[key] = snippet
        body = "".join(lines[end + 1 :]).strip("\n")
        for field in _BODY_FIELDS:
            if body.count("{" + field + "}") != 1:
                raise ValueError(f"{origin}: the prompt must contain {{{field}}} exactly once")
        return cls(body, snippets["source"], snippets["reference"])

    @property
    def prefix(self) -> str:
        """The system prefix: the body up to its first placeholder, identical for every item."""
        match = _BODY_PLACEHOLDER.search(self.body)
        assert match is not None  # parse() guarantees the placeholders
        return self.body[: match.start()]

    def render(self, instruction: str, image_token: str, *, source: bool, reference: bool) -> str:
        """The prompt for one item; each shown image appears as one ``image_token``. One pass
        over the body, so an instruction that happens to contain ``{reference}`` stays text."""
        values = {
            "source": self.source.replace(_IMAGE_PLACEHOLDER, image_token) if source else "",
            "reference": (
                self.reference.replace(_IMAGE_PLACEHOLDER, image_token) if reference else ""
            ),
            "instruction": instruction,
        }
        return _BODY_PLACEHOLDER.sub(lambda m: values[m.group(1)], self.body)


# -- the instructor -----------------------------------------------------------------------------


def _image_token_count(model_config: Any) -> int:
    """Tokens one image expands to: the vision tower's patches, plus its CLS token unless the
    LLaVA feature strategy is ``"default"`` (which drops it). The model itself checks the count
    on every forward, so a tower this formula does not fit fails loudly, not silently."""
    vision = model_config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if model_config.vision_feature_select_strategy == "full" else 0)


class Instructor:
    """A frozen LLaVA turning (instruction, first frame, optional reference) into condition
    tokens; see the module docstring. The model is never updated, so encodes from several
    threads are safe, if no faster than one after another."""

    def __init__(self, config: InstructorConfig) -> None:
        # Imported here: transformers takes seconds to import, and code that only needs the
        # config (Dagster definitions, the CLI) should not pay for it.
        from transformers import (
            AutoImageProcessor,
            AutoTokenizer,
            LlavaForConditionalGeneration,
        )

        dtype = dtype_of(config.dtype)
        if config.max_length < 1:
            raise ValueError(f"max_length must be positive, got {config.max_length}")
        self.config = config
        self.template = PromptTemplate.parse(
            load_prompt_template(config.prompt_template),
            str(resolve_prompt_template(config.prompt_template)),
        )
        local_model_dir(config.model, "instructor model")
        self.device = torch.device(config.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(config.model)
            # The PIL backend whether or not torchvision is installed: the same image gives the
            # same tokens on every machine (cached condition tokens stay valid), and a frame or
            # two per item is no work worth a GPU image pipeline.
            self.image_processor = (
                None
                if config.text_only
                else AutoImageProcessor.from_pretrained(config.model, backend="pil")
            )
            self.model = LlavaForConditionalGeneration.from_pretrained(config.model, dtype=dtype)
        except (OSError, ValueError) as exc:
            # transformers reports a missing or unreadable tokenizer as a ValueError.
            raise OSError(
                f"cannot load the instructor model {config.model!r} (a local directory or a hub "
                f"id of a LlavaForConditionalGeneration with tokenizer and image processor): {exc}"
            ) from exc
        self.model.to(self.device).eval().requires_grad_(False)

        model_config = self.model.config
        text_config = model_config.text_config
        self.hidden_size: int = int(text_config.hidden_size)
        self.image_token_count: int = _image_token_count(model_config)
        self.image_token_id: int = int(model_config.image_token_id)
        # The token string is whatever the tokenizer calls the model's image token id, so a
        # checkpoint that names it differently ("<|image|>") still works.
        self.image_token: str = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
        encoded = self.tokenizer(self.image_token, add_special_tokens=False)["input_ids"]
        if encoded != [self.image_token_id]:
            raise ValueError(
                f"{config.model}: the tokenizer does not encode the image token "
                f"{self.image_token!r} as the single id {self.image_token_id} (got {encoded})"
            )
        layers = int(text_config.num_hidden_layers) + 1  # the embeddings, then each layer
        if not -layers <= config.hidden_layer < layers:
            raise ValueError(
                f"hidden_layer {config.hidden_layer} is out of range for a language model with "
                f"{layers} hidden states (-{layers} .. {layers - 1})"
            )
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        self.pad_token_id: int = int(pad) if pad is not None else 0

        self.prefix_ids: list[int] = self._tokenize(self.template.prefix)
        self.prefix_length: int = len(self.prefix_ids)
        longest = self._tokenize(
            self.template.render("", self.image_token, source=True, reference=True)
        )
        if len(longest) >= config.max_length:
            raise ValueError(
                f"the prompt template alone takes {len(longest)} tokens, leaving no room for an "
                f"instruction within max_length={config.max_length}"
            )
        self._unconditional: dict[tuple[int, int], InstructorOutput] = {}

    def __repr__(self) -> str:
        return (
            f"Instructor(model={self.config.model!r}, hidden_layer={self.config.hidden_layer}, "
            f"text_only={self.config.text_only}, device={str(self.device)!r})"
        )

    # -- inputs ------------------------------------------------------------------------------
    def _tokenize(self, text: str) -> list[int]:
        """Token ids with the tokenizer's own special tokens (LLaMA-3: ``<|begin_of_text|>``)."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _item_ids(self, index: int, instruction: str, source: bool, reference: bool) -> list[int]:
        """One item's ids, each image still a single token, at most ``max_length`` long (the
        instruction is cut, by tokens, when it does not fit); the prefix is checked to be
        tokenized as on its own, which :attr:`prefix_length` cropping relies on."""
        instruction = instruction.strip()

        def ids_for(text: str) -> list[int]:
            rendered = self.template.render(
                text, self.image_token, source=source, reference=reference
            )
            return self._tokenize(rendered)

        ids = ids_for(instruction)
        if len(ids) > self.config.max_length:
            words = self.tokenizer(instruction, add_special_tokens=False)["input_ids"]
            keep = len(words)
            while len(ids) > self.config.max_length and keep > 0:
                # Decoding a cut id list can change its tokenization a little; shrink until
                # it fits (the empty instruction fits, as __init__ checked).
                keep = max(0, keep - (len(ids) - self.config.max_length))
                ids = ids_for(self.tokenizer.decode(words[:keep]))
            log.warning(
                "item %d: instruction cut to %d of %d tokens to fit max_length=%d",
                index,
                keep,
                len(words),
                self.config.max_length,
            )
        images = int(source) + int(reference)
        found = ids.count(self.image_token_id)
        if found != images:
            raise ValueError(
                f"item {index}: the prompt has {found} image tokens for {images} images; does "
                f"the instruction contain {self.image_token!r}?"
            )
        if ids[: self.prefix_length] != self.prefix_ids:
            raise ValueError(
                f"item {index}: the template's system prefix does not tokenize the same inside "
                "the prompt as on its own; end it with a newline or a special token"
            )
        expanded: list[int] = []
        for token in ids:
            if token == self.image_token_id:
                expanded.extend([self.image_token_id] * self.image_token_count)
            else:
                expanded.append(token)
        return expanded

    def _check_image(self, image: Any, what: str) -> np.ndarray:
        """``image`` checked, and padded to a square with the processor's mean colour unless
        ``pad_to_square`` is off."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise ValueError(f"{what}: expected a uint8 numpy array, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"{what}: expected an RGB image [H, W, 3], got shape {image.shape}")
        if not self.config.pad_to_square:
            return image
        return pad_to_square(image, [round(255 * m) for m in self.image_processor.image_mean])

    def prepare_inputs(
        self,
        instructions: Sequence[str],
        first_frames: Sequence[np.ndarray] | None = None,
        references: Sequence[np.ndarray | None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The model's inputs for a batch, on the model's device: ``input_ids`` and
        ``attention_mask`` (``int64 [B, S]``, right-padded; every image expanded to
        :attr:`image_token_count` tokens) and, unless ``text_only``, ``pixel_values``
        (``[N, 3, s, s]`` in the weights' dtype, images in prompt order: each item's first
        frame, then its reference). Arguments as for :meth:`encode`."""
        if isinstance(instructions, str):
            raise TypeError("instructions must be a sequence of strings, not one string")
        batch = len(instructions)
        if batch == 0:
            raise ValueError("nothing to encode: no instructions")
        text_only = self.config.text_only
        if not text_only:
            if first_frames is None:
                raise ValueError(
                    "first_frames is required unless text_only: item 0 has no first frame"
                )
            if len(first_frames) != batch:
                raise ValueError(f"{len(first_frames)} first frames for {batch} instructions")
        if references is not None and len(references) != batch:
            raise ValueError(f"{len(references)} references for {batch} instructions")

        rows: list[list[int]] = []
        images: list[np.ndarray] = []
        for i, instruction in enumerate(instructions):
            if not isinstance(instruction, str):
                raise ValueError(f"item {i}: instruction must be a string")
            reference = None
            if not text_only:
                frame = first_frames[i]  # type: ignore[index]
                if frame is None:
                    raise ValueError(f"item {i}: missing first frame (required unless text_only)")
                images.append(self._check_image(frame, f"item {i}: first frame"))
                if references is not None and references[i] is not None:
                    reference = self._check_image(references[i], f"item {i}: reference")
                    images.append(reference)
            rows.append(
                self._item_ids(
                    i, instruction, source=not text_only, reference=reference is not None
                )
            )

        length = max(len(row) for row in rows)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        inputs = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
        }
        if images:
            assert self.image_processor is not None
            # Channels last, said: left to guess, the processor reads an image 1 or 3 pixels
            # tall as channels-first.
            pixels = self.image_processor(
                images=images, return_tensors="pt", input_data_format="channels_last"
            )["pixel_values"]
            size = self.model.config.vision_config.image_size
            if tuple(pixels.shape[-2:]) != (size, size):
                raise ValueError(
                    f"{self.config.model}: the image processor makes {tuple(pixels.shape[-2:])} "
                    f"images but the vision tower expects {size}x{size}"
                )
            inputs["pixel_values"] = pixels.to(self.device, self.model.dtype)
        return inputs

    # -- encoding ----------------------------------------------------------------------------
    def encode(
        self,
        instructions: Sequence[str],
        first_frames: Sequence[np.ndarray] | None = None,
        references: Sequence[np.ndarray | None] | None = None,
    ) -> InstructorOutput:
        """Condition tokens for a batch, in one forward pass.

        ``instructions``: B strings. ``first_frames``: B ``uint8 [H, W, 3]`` RGB frames, the
        first frame of each source video (required unless ``text_only``, ignored then).
        ``references``: None, or B entries each a ``uint8 [h, w, 3]`` image or None (items may
        mix). Returns ``float32 [B, L, D]`` tokens on the configured device with an
        ``int64 [B, L]`` mask, right-padded; with ``crop_template`` the tokens start at the
        user turn. Runs under ``no_grad`` rather than ``inference_mode``: inference tensors
        cannot be saved for backward, and the trainable token refiner downstream needs that.
        """
        inputs = self.prepare_inputs(instructions, first_frames, references)
        with torch.no_grad():
            output = self.model(
                **inputs, output_hidden_states=True, use_cache=False, logits_to_keep=1
            )
        # LlavaForConditionalGeneration returns the language model's hidden states: the
        # embeddings (image features already spliced in), then one per decoder layer, the
        # last one after the final norm.
        hidden = output.hidden_states[self.config.hidden_layer]
        mask = inputs["attention_mask"]
        if self.config.crop_template:
            hidden = hidden[:, self.prefix_length :]
            mask = mask[:, self.prefix_length :]
        tokens = hidden.float() * mask.unsqueeze(-1).to(torch.float32)
        return InstructorOutput(tokens.contiguous(), mask.contiguous())

    def encode_unconditional(
        self, batch_size: int, frame_shape: tuple[int, int] = (256, 256)
    ) -> InstructorOutput:
        """``batch_size`` copies of the "no condition" tokens: an empty instruction with a black
        first frame (``frame_shape`` = (H, W)) and no reference; for condition dropout in
        training and the unconditional branch of classifier-free guidance. Encoded once per
        frame shape and cached (the model is frozen), then repeated."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        key = (int(frame_shape[0]), int(frame_shape[1]))
        if key not in self._unconditional:
            frames = None if self.config.text_only else [np.zeros((*key, 3), np.uint8)]
            self._unconditional[key] = self.encode([""], frames)
        one = self._unconditional[key]
        return InstructorOutput(
            one.tokens.repeat(batch_size, 1, 1), one.attention_mask.repeat(batch_size, 1)
        )
