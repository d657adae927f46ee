"""Tiny random-weight models for the mask backends, for tests and the offline demo.

Nothing here downloads: configs are written in code, the tokenizer is built from a word list,
weights are seeded random. The models exercise the real classes, loading paths and output
handling; their detections and masks mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import (
    BertConfig,
    BertTokenizerFast,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessorPil,
    GroundingDinoProcessor,
    SwinConfig,
)

from viva_pipelines.config.schema import Sam2Settings
from viva_pipelines.demo_world.scene import PALETTE, SHAPES, SPRITES

# Whole-word tokens for the demo world's object names plus caption glue; any other lower-case
# word still tokenizes, letter by letter, through the single-character pieces.
TINY_WORDS = tuple(
    dict.fromkeys(
        [
            *["a", "an", "the", "and", "of", "photo", "moving", "over"],
            *PALETTE,
            *SHAPES,
            *(word for name in SPRITES for word in name.split()),
        ]
    )
)
_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_CHARS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
_PUNCTUATION = list(".,;:!?'-&")

# SAM 2.1 tiny at 128 px (8x8 image embeddings): its image encoder, which dominates CPU time,
# runs several times faster than at 256 px; a 6-frame clip tracks in about a second on 2 cores.
TINY_SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
TINY_SAM2_IMAGE_SIZE = 128


def build_tiny_tokenizer() -> BertTokenizerFast:
    """A BERT-style WordPiece tokenizer over :data:`TINY_WORDS`, single characters, punctuation."""
    pieces = [*TINY_WORDS, *_CHARS, *_PUNCTUATION]
    vocab = {token: i for i, token in enumerate(dict.fromkeys([*_SPECIAL, *pieces]))}
    vocab.update({f"##{c}": len(vocab) + i for i, c in enumerate(_CHARS)})
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return BertTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )


def build_tiny_grounding_dino(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random Grounding-DINO (model + processor) to ``out_dir``; return ``out_dir``.

    Swin backbone (no timm needed), one-layer BERT text encoder, 16 queries. The processor
    resizes images to 128 px: the smallest side at which the coarsest feature level (1/64) is
    more than one pixel, which the model's group norms need.
    """
    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer()
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            image_size=128,
            patch_size=4,
            embed_dim=8,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=2,
            out_indices=[2, 3, 4],
        ),
        text_config=BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        ),
        d_model=32,  # the model's GroupNorm(32, d_model) sets the floor
        encoder_layers=1,
        decoder_layers=2,  # the decoder box heads are tied to the first: at least two layers
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        num_queries=16,
        max_text_len=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(config)
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(
            size={"shortest_edge": 128, "longest_edge": 128}
        ),
        tokenizer=tokenizer,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def tiny_sam2_settings(**overrides: object) -> Sam2Settings:
    """Tracking settings for random-weight SAM 2.1 tiny at 128 px on the CPU."""
    fields: dict = {"config": TINY_SAM2_CONFIG, "image_size": TINY_SAM2_IMAGE_SIZE, "device": "cpu"}
    return Sam2Settings(**(fields | overrides))
