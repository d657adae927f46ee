"""A LLaVA-family model run in-process with ``transformers``, behind the same interface as the
HTTP client, so the QC step and the judges can run air-gapped or on the training cluster's own
GPUs without an inference server.

Only the turn itself differs from the HTTP client: the messages (same OpenAI shape, images as
PNG data URLs) are turned into the processor's chat template plus a list of images, and
generation is greedy, so answers are reproducible and safe to cache.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from viva_pipelines.vlm.base import VlmBackend, VlmError
from viva_pipelines.vlm.cache import ByteStore, StorageLike
from viva_pipelines.vlm.guided import fill_object
from viva_pipelines.vlm.messages import Message, decode_image_url

#: Token budget of one free-text value in guided decoding.
STRING_TOKENS = 48


def to_chat_template(messages: Sequence[Message]) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """OpenAI-shaped messages → (``transformers`` chat conversation, images in prompt order).

    The conversation uses ``{"type": "image"}`` placeholders; the processor replaces each with
    the image tokens of the next image in the list, so the order must match."""
    conversation: list[dict[str, Any]] = []
    images: list[Image.Image] = []
    for message in messages:
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        converted: list[dict[str, Any]] = []
        for part in parts:
            if part["type"] == "text":
                converted.append({"type": "text", "text": part["text"]})
            elif part["type"] == "image_url":
                try:
                    images.append(decode_image_url(part["image_url"]["url"]))
                except ValueError as exc:
                    raise VlmError(f"cannot give this image to a local model: {exc}") from exc
                converted.append({"type": "image"})
            else:
                raise VlmError(f"unsupported message content part type {part['type']!r}")
        conversation.append({"role": message["role"], "content": converted})
    return conversation, images


class LocalLlavaBackend(VlmBackend):
    """A ``LlavaForConditionalGeneration`` and its processor, loaded from a local directory
    (never the hub: ``local_files_only``). The processor must carry a chat template, which is how
    each checkpoint says where images and roles go in its prompt.

    ``model_name`` is the model's identity in cache keys; it defaults to the directory name so
    that the same checkpoint copied to another machine still hits the cache. ``guided``: answers
    asked for with a JSON schema are decoded into it (:mod:`viva_pipelines.vlm.guided`);
    ``False``: free text, as the model writes it."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        max_new_tokens: int = 512,
        device: str = "cpu",
        dtype: str | None = None,
        model_name: str | None = None,
        guided: bool = True,
        cache: ByteStore | StorageLike | str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(cache=cache)
        self.model_path = Path(model_path)
        if not (self.model_path / "config.json").is_file():
            raise VlmError(f"{self.model_path}: not a LLaVA checkpoint folder (no config.json)")
        if max_new_tokens < 1:
            raise VlmError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.max_new_tokens = max_new_tokens
        self.guided = guided
        self.device = torch.device(device)
        self.model_name = model_name or self.model_path.name
        load_kwargs: dict[str, Any] = {"local_files_only": True}
        if dtype is not None:
            load_kwargs["dtype"] = getattr(torch, dtype)
        try:
            self.processor = AutoProcessor.from_pretrained(self.model_path, local_files_only=True)
            self.model = LlavaForConditionalGeneration.from_pretrained(
                self.model_path, **load_kwargs
            )
        except (OSError, ValueError) as exc:  # transformers' words for a folder it cannot load
            raise VlmError(f"{self.model_path}: not a loadable LLaVA checkpoint ({exc})") from exc
        if not getattr(self.processor, "chat_template", None):
            raise VlmError(f"the processor in {self.model_path} has no chat template")
        self.model.to(self.device).eval()
        # One generate at a time: concurrent calls would only contend for the same device.
        self._lock = threading.Lock()
        self._barred: list[int] | None = None

    def __repr__(self) -> str:
        return f"LocalLlavaBackend({str(self.model_path)!r}, device={str(self.device)!r})"

    @property
    def model_id(self) -> str:
        return self.model_name

    @property
    def params(self) -> dict[str, Any]:
        return {
            "decoding": "greedy",
            "max_new_tokens": self.max_new_tokens,
            "guided": self.guided,
        }

    def describe(self) -> str:
        return f"local LLaVA model {self.model_name} ({self.model_path})"

    def _complete(self, messages: Sequence[Message], schema: dict[str, Any] | None = None) -> str:
        conversation, images = to_chat_template(messages)
        prompt = self.processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        with self._lock, torch.inference_mode():
            if schema is None or not self.guided:
                return self._generate(prompt, images, self.max_new_tokens)
            try:
                return fill_object(
                    schema,
                    lambda prefix, options: self._choose(prompt + prefix, images, options),
                    lambda prefix, least: self._write(prompt + prefix, images, least),
                )
            except ValueError as exc:
                raise VlmError(f"{self.describe()}: {exc}") from exc

    def _inputs(self, text: str, images: list[Image.Image]):
        inputs = self.processor(images=images or None, text=text, return_tensors="pt")
        # Pixel values follow the weights' dtype (bf16/fp16 checkpoints); token ids stay integers.
        return inputs.to(self.device, dtype=self.model.dtype)

    def _generate(self, text: str, images: list[Image.Image], tokens: int, **options: Any) -> str:
        inputs = self._inputs(text, images)
        output = self.model.generate(**inputs, max_new_tokens=tokens, do_sample=False, **options)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        return self.processor.decode(new_tokens, skip_special_tokens=True)

    def _choose(self, text: str, images: list[Image.Image], options: Sequence[str]) -> int:
        """The option the model finds most likely after ``text`` (:meth:`option_scores`)."""
        scores = self.option_scores(text, images, options)
        return max(range(len(options)), key=scores.__getitem__)

    @torch.inference_mode()
    def option_scores(
        self, text: str, images: list[Image.Image], options: Sequence[str]
    ) -> list[float]:
        """Summed log probability of each option's tokens after ``text``.

        One forward pass reads the prompt (its images included: hundreds of tokens or more)
        and keeps its keys and values; each option (a few tokens) then runs on that cache,
        cut back to the prompt before the next. An option's tokens are those that
        ``text + option`` has after ``text``'s."""
        prompt = self._inputs(text, images)
        length = prompt["input_ids"].shape[1]
        read = self.model(**prompt, use_cache=True, logits_to_keep=1)
        cache = read.cache
        first = read.logits[0, -1].float().log_softmax(-1)
        tokenizer = self.processor.tokenizer
        known = len(tokenizer(text)["input_ids"])
        scores = []
        for option in options:
            ids = torch.tensor(tokenizer(text + option)["input_ids"][known:], device=self.device)
            score = first[ids[0]]
            if len(ids) > 1:
                cache.crop(length - cache.get_seq_length())
                logits = self.model(input_ids=ids[None, :-1], cache=cache).logits
                score = score + logits[0].float().log_softmax(-1).gather(1, ids[1:, None]).sum()
            scores.append(float(score))
        return scores

    def _write(self, text: str, images: list[Image.Image], least: int) -> str:
        """Free text after ``text`` up to the closing quote (or line end); a model that would
        close the string too early writes again with quotes and line breaks barred."""
        written = self._generate(text, images, STRING_TOKENS)
        value = written.split('"', 1)[0].split("\n", 1)[0].strip()
        if len(value) < least:
            barred = [[i] for i in self._quote_tokens()]
            value = self._generate(text, images, STRING_TOKENS, bad_words_ids=barred).strip()
        return value

    def _quote_tokens(self) -> list[int]:
        """Ids of the tokens whose text has a quote, backslash or line break (computed once)."""
        if self._barred is None:
            tokenizer = self.processor.tokenizer
            self._barred = [
                i for i in range(len(tokenizer)) if any(c in tokenizer.decode([i]) for c in '"\\\n')
            ]
        return self._barred
