"""Train Edit-GRPO variants over one SFT run and compare them with it on the val split.

Each variant is the configured ``grpo`` section (and ``rewards.weights``) plus overrides
(``key=value``, dotted conf keys, values parsed as YAML), trained through the entry point
``grpo_lora`` launches (under ``grpo_lora/<fingerprint>``: a re-run finds finished runs).
Every val video clip of the dataset is then edited by the SFT model and by the SFT model with
each LoRA, as ``benchmark_scores`` edits (the ODE sampler, the model's steps and guidance, one
seed), and scored: PSNR against the ground truth over the whole frame, inside the edit region
and outside it, and CLIP-IF with the reward CLIP (what Edit-GRPO's R_IF rewards). The
benchmark suite is not touched: this is where the GRPO recipe is tuned.

    .venv/bin/python bench/grpo_variants.py --sft sft_checkpoint/<key> --variant base \
        --variant noise grpo.sampling.final_noise=0.2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from bench_common import dataset_version, note, run_trainer

from viva_pipelines.config.loader import load_settings
from viva_pipelines.evaluation.metrics import capped_psnr
from viva_pipelines.model.clips import to_uint8_frames
from viva_pipelines.model.pipeline import Conditions, VivaEditPipeline, sample_edit
from viva_pipelines.rewards.clip_rewards import instruction_following
from viva_pipelines.rewards.models import RECORD_KEY, load_scorers
from viva_pipelines.settings import default_conf_dir
from viva_pipelines.storage import Storage
from viva_pipelines.train.runs import grpo_config, lora_key, model_key, summary_key
from viva_pipelines.train.sft_data import CachedSamples, collate, load_unconditional, pad_tokens


class ValSplit:
    """The val video clips of an SFT run's cache, batched, with their captions."""

    def __init__(self, store: Storage, sft_run: str):
        summary = store.read_json(summary_key(sft_run))
        cache = store.key_of(summary["cache_uri"])
        index = store.read_parquet(f"{cache}/index.parquet")
        val = index[(index["split"] == "val") & (index["modality"] == "video")]
        manifest = store.read_parquet("qc_dataset/manifest.parquet")
        self.rows = val.merge(
            manifest[["sample_id", "source_caption", "target_caption"]], on="sample_id"
        ).reset_index(drop=True)
        samples = CachedSamples(store, self.rows)
        items = [samples[i] for i in range(len(self.rows))]
        keep = torch.zeros(len(items), dtype=torch.bool)
        self.batch = collate(items, load_unconditional(store, cache), keep, keep)
        empty, empty_mask = pad_tokens([load_unconditional(store, cache)] * len(items))
        self.empty = (empty, empty_mask)


def score(pipeline: VivaEditPipeline, split: ValSplit, clip) -> pd.DataFrame:
    spec, batch = pipeline.spec, split.batch
    cond = Conditions.from_tokens(batch.tokens, batch.token_mask, spec.pooled)
    uncond = Conditions.from_tokens(*split.empty, spec.pooled)
    latents = sample_edit(
        pipeline.transformer,
        batch.source,
        batch.reference,
        cond,
        uncond,
        num_steps=spec.sampling.num_steps,
        guidance_scale=spec.sampling.guidance_scale,
        shift=spec.sampling.shift,
        embedded_guidance=spec.embedded_guidance,
        prediction=spec.prediction,
        gate_reading=spec.sampling.gate_reading,
        generator=torch.Generator().manual_seed(0),
    )
    codec = pipeline.codec
    edits, targets = codec.decode(latents), codec.decode(batch.target)
    regions = torch.nn.functional.interpolate(batch.mask, size=edits.shape[2:], mode="nearest")
    rows = []
    for i, row in split.rows.iterrows():
        out, tgt = to_uint8_frames(edits[i]), to_uint8_frames(targets[i])
        inside = regions[i, 0].numpy() > 0.5
        rows.append(
            {
                "edit_type": row.edit_type,
                "frame": capped_psnr(out, tgt),
                # (a global edit's all-True mask has no region apart from the frame)
                "region": capped_psnr(out, tgt, mask=inside) if not inside.all() else np.nan,
                "outside": capped_psnr(out, tgt, mask=~inside),
                "clip_if": float(
                    instruction_following(
                        clip, out[None], row.target_caption or "", row.source_caption or ""
                    )[0]
                ),
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sft", required=True, help="the SFT run, sft_checkpoint/<key>")
    parser.add_argument(
        "--variant", nargs="+", action="append", required=True, metavar="LABEL [KEY=VALUE ...]"
    )
    parser.add_argument("--log", default="grpo_variants.log", help="training output goes here")
    args = parser.parse_args()
    version = dataset_version()
    settings = load_settings(default_conf_dir())
    store = Storage(settings.storage.root)
    split = ValSplit(store, args.sft)
    with tempfile.TemporaryDirectory() as tmp:
        clip, _ = load_scorers(store, store.read_json(RECORD_KEY), tmp)
        base = VivaEditPipeline.from_pretrained(store.uri(model_key(args.sft)))
        tables = {"sft": score(base, split, clip)}
        timings = {"sft": None}
        for label, *pairs in args.variant:
            overrides = {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}
            variant = load_settings(default_conf_dir(), overrides=overrides)
            config = grpo_config(variant, store, args.sft.rsplit("/", 1)[-1], version)
            done = store.exists(summary_key(config.output_prefix))
            note(f"{label}: {config.output_prefix}" + (" (finished before)" if done else ""))
            started = time.perf_counter()
            if not done:
                run_trainer("viva_pipelines.train.grpo", config, Path(args.log))
            timings[label] = None if done else round(time.perf_counter() - started)
            tuned = VivaEditPipeline.from_pretrained(store.uri(model_key(args.sft)))
            tuned.load_lora(store.uri(lora_key(config.output_prefix)))
            tables[label] = score(tuned, split, clip)
            summary = store.read_json(summary_key(config.output_prefix))
            note(
                f"{label}: held-out reward {summary.get('eval/total_first'):.4f} -> "
                f"{summary.get('eval/total_last'):.4f}; {tables[label].mean(numeric_only=True)}"
            )
    rows = [
        {"model": name, "train s": timings[name], **table.mean(numeric_only=True).to_dict()}
        for name, table in tables.items()
    ]
    print(f"\nval split, {len(split.rows)} video clips of {args.sft}; PSNR (dB), CLIP-IF\n")
    print(pd.DataFrame(rows).round(3).to_markdown(index=False))
    print("\nedit-region PSNR per edit type\n")
    per_type = {name: t.groupby("edit_type")["region"].mean() for name, t in tables.items()}
    print(pd.DataFrame(per_type).T.round(2).to_markdown())


if __name__ == "__main__":
    main()
