"""Train variants of the SFT recipe on the demo dataset and compare them on its val split.

Each variant is the configured ``sft`` section plus overrides (``key=value``, dotted conf
keys, values parsed as YAML), trained through the same entry point ``sft_checkpoint``
launches (under ``sft_checkpoint/<fingerprint>``, so a re-run finds finished runs) and
scored on every val video clip of the dataset: PSNR against the ground truth over the whole
frame, inside the edit region and outside it (mean, and the worst clip outside), per edit type,
beside the identity baseline. ``--split train`` scores the training clips instead: beside the val
figures, the gap between the two says how much of a variant's fit does not carry over.
The benchmark suite is not touched: this is where the recipe is tuned.

``instructor=pretrained`` trains with ``instructor_model``'s instructor instead of the
untrained tiny one. ``oracle`` in a variant's overrides (``oracle=true``) replaces the instructor's tokens by a
fixed random vector per instruction word (a perfect bag-of-words text encoder, blind to the
frame): the bound on what a better text reading could give. ``--gate-readings`` also scores
each variant with other readings of its edit gate (``model.flow_matching.GateReading``).
``--pipeline`` also scores each variant through the shipped pipeline, the path the benchmark
and ``viva edit`` take (the instructor run on each request, ``VivaEditPipeline.edit_clips``),
with its mirror ensemble off and on (and on, with each of ``--gate-readings``).

    .venv/bin/python bench/sft_variants.py --variant base \
        --variant ema sft.optim.ema_decay=0.999 --steps 1200
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import re
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from bench_common import dataset_version, note, run_trainer
from safetensors.torch import save as save_safetensors
from sft_eval import edit_psnr, psnr_record

import viva_pipelines.model.transformer as transformer_module
from viva_pipelines.config.loader import load_settings
from viva_pipelines.model.clips import to_uint8_frames
from viva_pipelines.model.flow_matching import GATED_PREDICTIONS, GateReading
from viva_pipelines.model.pipeline import Conditions, VivaEditPipeline
from viva_pipelines.settings import default_conf_dir
from viva_pipelines.storage import Storage
from viva_pipelines.train.runs import instructor_location, model_key, sft_config, summary_key
from viva_pipelines.train.sft_data import (
    CachedSamples,
    collate,
    load_pixel_sample,
    load_unconditional,
    pad_tokens,
    read_dataset_manifest,
)

ORACLE_PREFIX = "sft_cache_oracle"


def word_vector(word: str, dim: int) -> torch.Tensor:
    seed = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed))


def oracle_tokens(instruction: str, dim: int) -> torch.Tensor:
    words = re.findall(r"[a-z]+", instruction.lower()) or ["<empty>"]
    return torch.stack([word_vector(w, dim) for w in words])


def make_oracle_cache(store: Storage, base: str, target: str) -> None:
    """A copy of the cache at ``base`` under ``target`` with oracle tokens."""
    if store.exists(f"{target}/index.parquet"):
        return
    index = store.read_parquet(f"{base}/index.parquet")
    samples = CachedSamples(store, index)
    dim = load_unconditional(store, base).shape[-1]
    for i in range(len(index)):
        item = dict(samples[i])
        item["tokens"] = oracle_tokens(index.at[i, "instruction"], dim).contiguous()
        store.write_bytes(index.at[i, "key"].replace(base, target, 1), save_safetensors(item))
    store.write_bytes(
        f"{target}/unconditional.safetensors",
        save_safetensors({"tokens": oracle_tokens("", dim).contiguous()}),
    )
    index["key"] = [k.replace(base, target, 1) for k in index["key"]]
    store.write_parquet(f"{target}/index.parquet", index)


def run_cache_prefix(store: Storage, config) -> str:
    """The cache prefix the SFT run of ``config`` reads (and fills when it is missing)."""
    from viva_pipelines.model.codecs import load_codec
    from viva_pipelines.train import sft

    instructor = sft.instructor_config(config, torch.device("cpu"), store)
    return sft.cache_prefix_of(store, config, load_codec(config.model.codec), instructor)


@contextlib.contextmanager
def true_mask_gate(mask: torch.Tensor):
    """Within the block the transformer's edit gate is ``mask`` ``[B, 1, T, H, W]`` resized to
    the latent grid (area), whatever the model's gate channel says."""
    own = transformer_module.velocity_from_prediction

    def with_true_gate(output, noisy, source, sigmas, prediction, gate_reading=None):
        gate = F.interpolate(mask, size=output.shape[2:], mode="area").clamp(1e-4, 1 - 1e-4)
        output = torch.cat([output[:, :-1], torch.logit(gate).to(output.dtype)], dim=1)
        return own(output, noisy, source, sigmas, prediction)  # the true gate read as it is

    transformer_module.velocity_from_prediction = with_true_gate
    try:
        yield
    finally:
        transformer_module.velocity_from_prediction = own


def evaluate(
    store: Storage,
    run: str,
    steps: int | None,
    guidance: float | None,
    shift: float | None,
    *,
    split: str = "val",
    true_gate: bool = False,
    gate_reading: GateReading | None = None,
) -> pd.DataFrame:
    summary = store.read_json(summary_key(run))
    cache = store.key_of(summary["cache_uri"])
    index = store.read_parquet(f"{cache}/index.parquet")
    clips = index[(index["split"] == split) & (index["modality"] == "video")]
    clips = clips.reset_index(drop=True)
    samples = CachedSamples(store, clips)
    unconditional = load_unconditional(store, cache)
    pipeline = VivaEditPipeline.from_pretrained(store.uri(model_key(run)))
    spec = pipeline.spec
    items = [samples[i] for i in range(len(clips))]
    keep = torch.zeros(len(items), dtype=torch.bool)
    batch = collate(items, unconditional, keep, keep)
    cond = Conditions.from_tokens(batch.tokens, batch.token_mask, spec.pooled)
    empty, empty_mask = pad_tokens([unconditional] * len(items))
    uncond = Conditions.from_tokens(empty, empty_mask, spec.pooled)
    if true_gate and spec.prediction not in GATED_PREDICTIONS:
        raise SystemExit(f"--true-mask-gate: {run} has no edit gate ({spec.prediction})")
    with true_mask_gate(batch.mask) if true_gate else contextlib.nullcontext():
        table = edit_psnr(
            pipeline,
            pipeline.transformer,
            batch,
            cond,
            uncond,
            steps or spec.sampling.num_steps,
            spec.sampling.guidance_scale if guidance is None else guidance,
            spec.sampling.shift if shift is None else shift,
            gate_reading,
        )
    table["edit_type"] = clips["edit_type"]
    return table


def pipeline_scores(
    store: Storage,
    run: str,
    manifest_key: str,
    *,
    mirror: bool,
    split: str = "val",
    gate_reading: GateReading | None = None,
) -> pd.DataFrame:
    """Per clip of ``split``, PSNR of the edits the run's shipped pipeline makes, as the
    benchmark calls it (one request per clip: :meth:`VivaEditPipeline.prepare` runs the instructor, then
    ``edit_clips``), with its mirror ensemble on or off and its gate read as shipped or as
    ``gate_reading`` says; the same columns as :func:`evaluate`."""
    pipeline = VivaEditPipeline.from_pretrained(store.uri(model_key(run)))
    spec = pipeline.spec
    sampling = dataclasses.replace(spec.sampling, mirror_ensemble=mirror)
    if gate_reading is not None:
        sampling = dataclasses.replace(
            sampling,
            gate_threshold=gate_reading.threshold,
            gate_sharpness=gate_reading.sharpness,
        )
    pipeline.spec = dataclasses.replace(spec, sampling=sampling)
    manifest = read_dataset_manifest(store, manifest_key)
    clips = manifest[
        (manifest["status"] == "accepted")
        & (manifest["split"] == split)
        & (manifest["modality"] == "video")
    ]
    rows = []
    for row in clips.sort_values("sample_id").assign(mirrored=False).itertuples():
        sample = load_pixel_sample(store, row, spec.geometry)
        prepared = pipeline.prepare(row.instruction, sample.first_frame, sample.reference_image)
        edited = pipeline.edit_clips(to_uint8_frames(sample.source)[None], prepared)[0]
        source, target = to_uint8_frames(sample.source), to_uint8_frames(sample.target)
        inside = sample.mask[0].numpy() > 0.5
        rows.append({"edit_type": row.edit_type, **psnr_record(edited, source, target, inside)})
    return pd.DataFrame(rows)


def gate_reading(text: str) -> GateReading:
    """``THRESHOLD[:SHARPNESS]`` (``--gate-readings``)."""
    threshold, _, sharpness = text.partition(":")
    try:
        return GateReading(float(threshold), float(sharpness or 1))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--variant", nargs="+", action="append", required=True, metavar="LABEL [KEY=VALUE ...]"
    )
    parser.add_argument("--steps", type=int, help="sft.optim.max_steps of every variant")
    parser.add_argument("--sample-steps", type=int, help="sampling steps (default: the model's)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    parser.add_argument("--shift", type=float, help="sampling time shift (default: the model's)")
    parser.add_argument(
        "--true-mask-gate",
        action="store_true",
        help="also score each variant with the true edit mask as its gate (a diagnostic)",
    )
    parser.add_argument(
        "--gate-readings",
        type=gate_reading,
        nargs="+",
        default=[],
        metavar="THRESHOLD[:SHARPNESS]",
        help="also score each variant reading its edit gate so (GateReading; sharpness 1)",
    )
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="also score each variant through the shipped pipeline, mirror ensemble off and on",
    )
    parser.add_argument(
        "--split",
        choices=("val", "train"),
        default="val",
        help="the dataset's clips to score (train: how well each variant fits what it saw)",
    )
    parser.add_argument("--log", default="sft_variants.log", help="training output goes here")
    args = parser.parse_args()
    version = dataset_version()
    rows, per_type = [], {}
    identity = None
    for label, *pairs in args.variant:
        overrides = {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}
        oracle = overrides.pop("oracle", False)
        pretrained = overrides.pop("instructor", None) == "pretrained"
        if args.steps:
            overrides.setdefault("sft.optim.max_steps", args.steps)
        settings = load_settings(default_conf_dir(), overrides=overrides)
        store = Storage(settings.storage.root)
        instructor = instructor_location(store) if pretrained else None
        if pretrained and instructor is None:
            sys.exit("instructor=pretrained: materialize instructor_model first")
        config = sft_config(settings, version, instructor)
        if oracle:  # the run's own cache, filled from the plain one with oracle tokens
            plain = run_cache_prefix(store, config)
            if not store.exists(f"{plain}/index.parquet"):
                sys.exit(f"{plain}: train a plain variant first (its cache is copied)")
            config = sft_config(
                load_settings(
                    default_conf_dir(),
                    overrides={**overrides, "sft.data.cache_prefix": ORACLE_PREFIX},
                ),
                version,
            )
            make_oracle_cache(store, plain, run_cache_prefix(store, config))
        started = time.perf_counter()
        done = store.exists(summary_key(config.output_prefix))
        note(f"{label}: {config.output_prefix}" + (" (finished before)" if done else ""))
        if not done:
            run_trainer("viva_pipelines.train.sft", config, Path(args.log))
        took = time.perf_counter() - started
        summary = store.read_json(summary_key(config.output_prefix))

        run = config.output_prefix
        score = partial(
            evaluate, store, run, args.sample_steps, args.guidance, args.shift, split=args.split
        )
        scored = [(label, score)]
        if args.true_mask_gate:
            scored.append((f"{label}, true-mask gate", partial(score, true_gate=True)))
        for reading in args.gate_readings:
            name = f"{label}, gate {reading.threshold}:{reading.sharpness}"
            scored.append((name, partial(score, gate_reading=reading)))
        if args.pipeline:
            shipped = partial(
                pipeline_scores, store, run, config.data.manifest_key, split=args.split
            )
            scored.append((f"{label}, pipeline", partial(shipped, mirror=False)))
            scored.append((f"{label}, pipeline + mirror", partial(shipped, mirror=True)))
            for reading in args.gate_readings:
                name = f"{label}, pipeline + mirror, gate {reading.threshold}:{reading.sharpness}"
                scored.append((name, partial(shipped, mirror=True, gate_reading=reading)))
        for name, scoring in scored:
            table = scoring()
            if identity is None:  # the cached path's masks, as every variant's first row
                identity = table
            rows.append(
                {
                    "variant": name,
                    "train s": round(took) if name == label and not done else None,
                    "val loss": summary.get("val_loss_last"),
                    "frame": table["model frame"].mean(),
                    "region": table["model region"].mean(),
                    "outside": table["model outside"].mean(),
                    # the mean hides the clips whose whole frame the edit gate opened over
                    "worst outside": table["model outside"].min(),
                }
            )
            per_type[name] = table.groupby("edit_type")["model frame"].mean()
            note(f"{name}: {rows[-1]}")
    rows.append(
        {
            "variant": "identity",
            "frame": identity["identity frame"].mean(),
            "region": identity["identity region"].mean(),
            "outside": identity["identity outside"].mean(),
            "worst outside": identity["identity outside"].min(),
        }
    )
    per_type["identity"] = identity.groupby("edit_type")["identity frame"].mean()
    clips = f"{args.split} split, {len(identity)} video clips"
    print(f"\n{clips}; PSNR (dB) against the ground truth\n")
    print(pd.DataFrame(rows).round(2).to_markdown(index=False))
    print("\nwhole-frame PSNR per edit type\n")
    print(pd.DataFrame(per_type).T.round(2).to_markdown())


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
