"""A tiny, randomly initialised LLaVA saved like a real checkpoint: the CPU demo's instructor.

Tests and the demo need an instructor that loads through the same ``from_pretrained`` path as
LLaVA-LLaMA-3-8B, with nothing downloaded. Everything is built here: a byte-level BPE tokenizer
trained on the demo world's instructions and captions (so they tokenize into few tokens, and
any other text still tokenizes), with LLaMA-3's chat markup and an ``<image>`` token; a tiny
CLIP vision tower and Llama language model with seeded random weights; a PIL CLIP image
processor. The weights mean nothing, which is fine: the instructor is frozen, and the editing
model's trainable token refiner learns to read whatever it produces. Only shapes, plumbing and
determinism matter.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from viva_pipelines.demo_world.sample import random_scene
from viva_pipelines.demo_world.scene import PALETTE, TONES, object_bank
from viva_pipelines.model.instructor import PromptTemplate, load_prompt_template
from viva_pipelines.pairs import captions
from viva_pipelines.pairs.captions import with_article
from viva_pipelines.pairs.generators import HYBRID_RECIPES, as_clause, load_templates

BOS, EOS, PAD, IMAGE = "<|begin_of_text|>", "<|end_of_text|>", "<pad>", "<image>"
#: LLaMA-3's chat markup, as single tokens, so the default prompt template reads as it does to
#: the production model.
CHAT_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, IMAGE, *CHAT_TOKENS)
#: LLaVA-LLaMA-3's chat template (images before the text of their turn); the tokenizer adds
#: ``BOS`` itself. What the VLM backend (``vlm/local.py``) formats conversations with.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>"
    "\n\n{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
#: LLaMA-3's pre-tokenizer split: newline runs stay one piece, so a template's system prefix
#: tokenizes the same alone as followed by the user turn.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: How often the prompt template's own text is repeated in the tokenizer's training texts: it
#: is read with every item, so it should weigh like the instructions, not like one sentence.
TEMPLATE_WEIGHT = 256


def _template_texts(template: str) -> list[str]:
    """The fixed text of a prompt template (its placeholders and chat markup taken out)."""
    parsed = PromptTemplate.parse(load_prompt_template(template), template)
    markup = "|".join(re.escape(t) for t in CHAT_TOKENS)
    pieces = [parsed.body, parsed.source, parsed.reference]
    text = "\n".join(p.replace("{image}", " ") for p in pieces)
    text = re.sub(r"\{(source|reference|instruction)\}", " ", text)
    return [line for line in re.split(markup, text) if line.strip()]


def instruction_vocabulary(num_scenes: int = 64, template: str = "instructor.md") -> list[str]:
    """Texts to train the tiny tokenizer on: every instruction wording of
    ``assets/prompts/edit_instructions.yaml`` filled with every object of the demo world's bank
    (new objects, colours and looks cycled alongside), hybrids of them, captions of
    ``num_scenes`` random demo scenes (with tones and looks), the pretrained instructor's answers
    (where an edit goes, then a caption), and the prompt template's text
    weighted by :data:`TEMPLATE_WEIGHT`. Deterministic, without duplicates except the template."""
    templates = load_templates()
    labels = [entry.label for entry in object_bank()]
    colours = list(PALETTE)
    looks = [*templates.tones.values(), *templates.styles.values()]
    places = [phrase for row in captions.POSITION_PHRASES for phrase in row]
    by_type: dict[str, list[str]] = {}
    for edit_type, options in templates.instructions.items():
        if edit_type == "hybrid":
            continue
        if edit_type in ("style", "tone"):
            vocabulary = templates.styles if edit_type == "style" else templates.tones
            filled = [o.format(style=phrase) for o in options for phrase in vocabulary.values()]
        else:
            filled = []
            for k, option in enumerate(options):
                for i, label in enumerate(labels):
                    new = labels[(i + k + 1) % len(labels)]  # never the object itself
                    filled.append(
                        option.format(
                            object=label,
                            a_object=with_article(label),
                            new_object=new,
                            a_new_object=with_article(new),
                            colour=colours[(i + k) % len(colours)],
                            where=places[(i + k) % len(places)],
                            style=looks[(i + k) % len(looks)],
                        )
                    )
        by_type[edit_type] = filled
    hybrids = []
    for r, (first_type, second_type) in enumerate(HYBRID_RECIPES):
        firsts, seconds = by_type[first_type], by_type[second_type]
        for k, option in enumerate(templates.instructions["hybrid"]):
            for j in range(8):
                first = firsts[(7 * j + r + k) % len(firsts)]
                second = seconds[(11 * j + 3 * r + k) % len(seconds)]
                hybrids.append(
                    option.format(first=as_clause(first), second=as_clause(second, lower=True))
                )
    scene_captions = []
    for seed in range(num_scenes):
        scene = random_scene(seed)
        for tone in TONES:
            scene_captions.append(scene.with_tone(tone).caption())
        scene_captions.append(captions.with_look(scene.caption(), looks[seed % len(looks)]))
    # What the pretrained instructor answers (viva_pipelines.train.instructor): where, then
    # the caption of the result (the change it names first is made of caption words); and
    # the captioning question.
    answers = [f"{places[i % len(places)]}: {c}." for i, c in enumerate(scene_captions)]
    answers += [f"everywhere: {c}." for c in scene_captions[:: len(places)]]
    answers.append("Describe the video.")
    texts = [text for filled in by_type.values() for text in filled] + hybrids + scene_captions
    texts += answers
    return list(dict.fromkeys(texts)) + _template_texts(template) * TEMPLATE_WEIGHT


def _train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (LLaMA-3 style split, ``<|begin_of_text|>`` prepended)
    wrapped as ``transformers.PreTrainedTokenizerFast``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, backend.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="right",
        model_max_length=4096,
    )


def build_tiny_instructor(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 512,
) -> Path:
    """Build a tiny ``LlavaForConditionalGeneration`` with its tokenizer (trained on ``texts``,
    e.g. :func:`instruction_vocabulary`) and image processor, and ``save_pretrained`` them all
    into ``out_dir``, which then loads exactly like a real LLaVA checkpoint. The vision tower
    and the language model share ``hidden_size`` / ``num_layers`` / ``num_heads``; one image is
    ``(image_size // patch_size) ** 2`` tokens (CLS dropped, LLaVA's "default" strategy). Same
    texts and seed, same files; the caller's torch random state is left alone. Returns
    ``out_dir``."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise ValueError("no texts to train the tokenizer on")
    tokenizer = _train_tokenizer(texts, vocab_size)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=hidden_size,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=4096,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_select_strategy="default",
        # LLaVA-1.5's choice: the vision tower's penultimate layer.
        vision_feature_layer=-2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def ensure_tiny_instructor(parent: str | Path | None = None, *, seed: int = 0) -> Path:
    """The demo instructor, built on first use into ``parent`` (default: the system temp dir).

    Built from the shipped vocabulary and ``seed``, so every machine (a CI runner, a training
    pod) builds the same weights and nothing has to be shipped or downloaded; the directory
    name carries a hash of the inputs (the texts, the seed and the sizes
    :func:`build_tiny_instructor` builds with, so a build of other sizes is never taken for
    it), and the build is published with an atomic rename so concurrent ranks never see half a
    model.
    """
    texts = instruction_vocabulary()
    sizes = {
        name: parameter.default
        for name, parameter in inspect.signature(build_tiny_instructor).parameters.items()
        if parameter.kind is parameter.KEYWORD_ONLY and name != "seed"
    }
    digest = hashlib.sha256(json.dumps([texts, seed, sizes]).encode()).hexdigest()[:12]
    target = Path(parent or tempfile.gettempdir(), f"viva-tiny-instructor-{digest}")
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    build_tiny_instructor(staging, texts, seed=seed)
    try:
        os.replace(staging, target)
    except OSError:  # another process published it first
        shutil.rmtree(staging, ignore_errors=True)
    return target
