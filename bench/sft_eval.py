"""PSNR of an SFT run's edits against the ground truth on the whole validation split.

For every validation video clip of the run's cache: the trained model's edit (the run's own
sampling settings unless overridden), the untrained model's (the same architecture, freshly
initialised with the run's seed) and the identity baseline (the source returned unchanged),
each compared with the ground-truth target over the whole frame, inside the edit region and
outside it. Prints a markdown table per edit type and overall.

    .venv/bin/python bench/sft_eval.py --root data --run sft_checkpoint/<run key>
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch
from diffusers import HunyuanVideoTransformer3DModel

from viva_pipelines.evaluation.metrics import capped_psnr
from viva_pipelines.model.clips import to_uint8_frames
from viva_pipelines.model.pipeline import Conditions, VivaEditPipeline, sample_edit
from viva_pipelines.storage import Storage
from viva_pipelines.train.runs import model_key, summary_key
from viva_pipelines.train.sft_data import CachedSamples, collate, load_unconditional, pad_tokens


def edit_psnr(
    pipeline, transformer, batch, cond, uncond, steps, guidance, shift, gate_reading=None
) -> pd.DataFrame:
    """Per-clip PSNR of ``transformer``'s edits (``gate_reading``: the pipeline's own unless
    given) and of the identity baseline against the ground truth."""
    latents = sample_edit(
        transformer,
        batch.source,
        batch.reference,
        cond,
        uncond,
        num_steps=steps,
        guidance_scale=guidance,
        shift=shift,
        generator=torch.Generator().manual_seed(1),
        embedded_guidance=pipeline.spec.embedded_guidance,
        prediction=pipeline.spec.prediction,
        gate_reading=gate_reading or pipeline.spec.sampling.gate_reading,
    )
    codec = pipeline.codec
    edits, targets, sources = (codec.decode(x) for x in (latents, batch.target, batch.source))
    regions = torch.nn.functional.interpolate(batch.mask, size=edits.shape[2:], mode="nearest")
    rows = []
    for i in range(len(edits)):
        out, tgt, src = (to_uint8_frames(x[i]) for x in (edits, targets, sources))
        rows.append(psnr_record(out, src, tgt, regions[i, 0].numpy() > 0.5))
    return pd.DataFrame(rows)


def psnr_record(edited, source, target, inside) -> dict[str, float]:
    """PSNR of the edit and of the identity baseline (the source) against ``target``, over the
    whole frame, inside the edit region ``inside`` and outside it (uint8 videos, bool mask)."""
    record = {}
    for name, video in (("model", edited), ("identity", source)):
        record[f"{name} frame"] = capped_psnr(video, target)
        record[f"{name} region"] = capped_psnr(video, target, mask=inside)
        record[f"{name} outside"] = capped_psnr(video, target, mask=~inside)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="data", help="storage root of the run")
    parser.add_argument("--run", required=True, help="the run's prefix, sft_checkpoint/<key>")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the run's)")
    args = parser.parse_args()
    storage = Storage(args.root)
    summary = storage.read_json(summary_key(args.run))
    cache = storage.key_of(summary["cache_uri"])
    index = storage.read_parquet(f"{cache}/index.parquet")
    val = index[(index["split"] == "val") & (index["modality"] == "video")].reset_index(drop=True)
    samples = CachedSamples(storage, val)
    unconditional = load_unconditional(storage, cache)
    pipeline = VivaEditPipeline.from_pretrained(storage.uri(model_key(args.run)))
    spec = pipeline.spec
    items = [samples[i] for i in range(len(val))]
    keep = torch.zeros(len(items), dtype=torch.bool)
    batch = collate(items, unconditional, keep, keep)
    cond = Conditions.from_tokens(batch.tokens, batch.token_mask, spec.pooled)
    empty, empty_mask = pad_tokens([unconditional] * len(items))
    uncond = Conditions.from_tokens(empty, empty_mask, spec.pooled)
    steps = args.steps or spec.sampling.num_steps
    guidance = spec.sampling.guidance_scale if args.guidance is None else args.guidance
    torch.manual_seed(0)
    untrained = HunyuanVideoTransformer3DModel.from_config(pipeline.transformer.config)
    tables = {}
    for name, transformer in (("trained", pipeline.transformer), ("untrained", untrained)):
        table = edit_psnr(
            pipeline, transformer.eval(), batch, cond, uncond, steps, guidance, spec.sampling.shift
        )
        table["edit_type"] = val["edit_type"]
        tables[name] = table
    trained, untrained_table = tables["trained"], tables["untrained"]
    report = trained.groupby("edit_type").mean()
    report.loc["all"] = trained.drop(columns="edit_type").mean()
    report.insert(
        0,
        "untrained frame",
        [
            *untrained_table.groupby("edit_type")["model frame"].mean(),
            untrained_table["model frame"].mean(),
        ],
    )
    report.insert(0, "clips", [*val.groupby("edit_type").size(), len(val)])
    print(
        f"PSNR (dB) against the ground-truth target, {len(val)} val clips of {args.run}, "
        f"{steps} steps, guidance {guidance}, shift {spec.sampling.shift}\n"
    )
    print(report.round(2).to_markdown())


if __name__ == "__main__":
    main()
