"""The paper's ablation on the demo world: five configurations, same budget, several seeds.

1. vanilla: the instructor read as a plain text encoder (``text_only``), plain flow matching
   (``mask_lambda: 0``), no image pairs;
2. + VLM instructor: the instructor (``instructor_model``'s) sees the first frame (and
   reference);
3. + mask-weighted loss: ``mask_lambda`` from conf;
4. + image pairs: the full SFT recipe (conf as is);
5. + Edit-GRPO: configuration 4 with its Edit-GRPO LoRA.

Every SFT run gets the same steps and seed per seed row (by default the demo's budget: the
configured SFT steps and Edit-GRPO iterations); each is trained through the same entry
point the ``sft_checkpoint`` asset launches (under ``sft_checkpoint/<fingerprint>``, so a
re-run finds finished runs) and evaluated on the demo benchmark suite. Prints one table per
criterion: rows are the categories (and their average), columns the configurations, each cell
the mean over seeds and, after the ``±``, half the range between the seeds; then each seed's
averages, to read each step per seed. The primary
criterion is the edit-region PSNR against the ground truth (``Edit PSNR``): inside the region
the instruction is about, where returning the source is wrong by construction.

Needs what ``make demo`` leaves: ``qc_dataset``, ``instructor_model``, ``reward_models`` and
the rendered suite.

    DAGSTER_HOME=.dagster .venv/bin/python bench/ablation.py --seeds 0 1

``--configs`` runs some of the configurations only, or adds the opt-in one: ``--configs +images
"+images, text only"`` scores the full recipe beside the same with the instructor reading the
text alone (leave-one-out: what the frame gives once the rest of the recipe is in);
``--configs +images +Edit-GRPO --seeds 0 1`` scores the demo's recipe over two seeds on the
suite, and with ``--steps`` at another SFT budget (a measurement of what the budget costs, not a way to choose a recipe: that is done on
the val split).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
from bench_common import dataset_version, note, run_trainer

from viva_pipelines.config.loader import load_settings
from viva_pipelines.defs.benchmark import load_configured_suite
from viva_pipelines.defs.ingest import ingest_options
from viva_pipelines.evaluation.benchmark import (
    CRITERIA,
    IdentityEditor,
    PipelineEditor,
    category_table,
    run_benchmark,
)
from viva_pipelines.evaluation.suite import CATEGORIES
from viva_pipelines.model.pipeline import VivaEditPipeline
from viva_pipelines.rewards.models import RECORD_KEY, load_scorers
from viva_pipelines.settings import default_conf_dir
from viva_pipelines.storage import Storage
from viva_pipelines.train.runs import (
    grpo_config,
    instructor_location,
    lora_key,
    model_key,
    run_key,
    sft_config,
)

REPO = Path(__file__).resolve().parents[1]
#: (label, SFT overrides, with Edit-GRPO); overrides are on top of the embedded profile.
CONFIGS: list[tuple[str, dict[str, object], bool]] = [
    ("vanilla", {"sft.model.text_only": True, "sft.loss.mask_lambda": 0.0,
                 "sft.data.use_images": False}, False),
    ("+instructor", {"sft.loss.mask_lambda": 0.0, "sft.data.use_images": False}, False),
    ("+mask loss", {"sft.data.use_images": False}, False),
    ("+images", {}, False),
    ("+Edit-GRPO", {}, True),
]  # fmt: skip
#: Opt-in (``--configs``): the full recipe with one component taken out, which the cumulative
#: order above cannot show: what the component gives once the others are in.
LEAVE_ONE_OUT: list[tuple[str, dict[str, object], bool]] = [
    ("+images, text only", {"sft.model.text_only": True}, False),  # the instructor blind
]
#: Every configuration ``--configs`` may name, in the order they run and are reported.
RUNNABLE = CONFIGS + LEAVE_ONE_OUT
REPORTED = ("region_psnr", "target_psnr", "bg_psnr", "clip_if", "clip_t")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, help="SFT steps of every run; default: the configured")
    parser.add_argument(
        "--grpo-iterations", type=int, help="Edit-GRPO iterations; default: the configured ones"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=[label for label, _, _ in RUNNABLE],
        default=[label for label, _, _ in CONFIGS],
        metavar="LABEL",
        help="only these configurations (e.g. the full recipe at another --steps); default: all",
    )
    parser.add_argument("--log", default="ablation.log", help="training output goes here")
    parser.add_argument(
        "--rows", default="ablation_rows.parquet", help="per-edit scores, saved as they come"
    )
    parser.add_argument("--report-only", action="store_true", help="tabulate saved --rows")
    args = parser.parse_args()
    if len(args.seeds) < 2:
        parser.error("the spread needs at least two seeds")
    configured = load_settings(default_conf_dir())
    args.steps = args.steps or configured.sft.optim.max_steps
    args.grpo_iterations = args.grpo_iterations or configured.grpo.optim.iterations
    if args.report_only:
        report(pd.read_parquet(args.rows), args)
        return
    version = dataset_version()
    log = Path(args.log)
    rows = []
    for seed in args.seeds:
        budget = {
            "sft.optim.max_steps": args.steps,
            "sft.runtime.seed": seed,
            "grpo.optim.iterations": args.grpo_iterations,
            "grpo.runtime.seed": seed,
        }
        for label, overrides, with_grpo in RUNNABLE:
            if label not in args.configs:
                continue
            settings = load_settings(default_conf_dir(), overrides={**budget, **overrides})
            store = Storage(settings.storage.root)
            config = sft_config(settings, version, instructor_location(store))
            started = time.perf_counter()
            note(f"seed {seed} {label}: SFT {config.output_prefix}")
            run_trainer("viva_pipelines.train.sft", config, log)
            model_dir = store.uri(model_key(config.output_prefix))
            pipeline = VivaEditPipeline.from_pretrained(model_dir)
            if with_grpo:
                grpo = grpo_config(settings, store, run_key(config), version)
                note(f"seed {seed} {label}: Edit-GRPO {grpo.output_prefix}")
                run_trainer("viva_pipelines.train.grpo", grpo, log)
                pipeline.load_lora(store.uri(lora_key(grpo.output_prefix)))
            trained_s = time.perf_counter() - started
            editors = [PipelineEditor(label, pipeline)]
            if label == args.configs[0]:
                editors.append(IdentityEditor(editors[0].geometry))
            media, instances = load_configured_suite(settings)
            with tempfile.TemporaryDirectory() as tmp:
                clip, _ = load_scorers(store, store.read_json(RECORD_KEY), tmp)
                run = run_benchmark(media, instances, editors, clip, ingest_options(settings).spec)
            failed = int(run.rows["error"].notna().sum())
            note(f"seed {seed} {label}: trained {trained_s:.0f}s, {failed} failed edits")
            rows.append(run.rows.assign(seed=seed))
            pd.concat(rows, ignore_index=True).to_parquet(args.rows)
    report(pd.concat(rows, ignore_index=True), args)


def _cell(mean: float, spread: float) -> str:
    """``mean ± spread``, or ``n/a`` where the criterion does not apply (BG PSNR of a global
    edit)."""
    return "n/a" if pd.isna(mean) else f"{mean:.3f} ± {spread:.3f}"


def report(rows: pd.DataFrame, args: argparse.Namespace) -> None:
    """Per criterion: categories x configurations, mean over seeds ± half their range."""
    per_seed = {
        seed: category_table(group.drop(columns="seed")) for seed, group in rows.groupby("seed")
    }
    models = [label for label, _, _ in RUNNABLE] + ["identity"]
    print(
        f"\nAblation on the demo suite: {args.steps} SFT steps, {args.grpo_iterations} "
        f"Edit-GRPO iterations, seeds {args.seeds}; mean ± half-range over seeds\n"
    )
    for criterion in REPORTED:
        stacked = pd.concat(
            {seed: table.xs(criterion, axis=1, level=1) for seed, table in per_seed.items()}
        )
        mean = stacked.groupby(level=1, sort=False).mean()
        spread = (
            stacked.groupby(level=1, sort=False).max() - stacked.groupby(level=1, sort=False).min()
        ) / 2
        order = [c for c in (*CATEGORIES, "average") if c in mean.index]
        cells = pd.DataFrame(
            {
                model: [_cell(mean.at[c, model], spread.at[c, model]) for c in order]
                for model in models
                if model in mean
            },
            index=order,
        )
        print(f"### {CRITERIA[criterion]}\n")
        print(cells.to_markdown())
        print()
    print("### Averages per seed\n")
    per_seed_average = pd.DataFrame(
        {
            f"{CRITERIA[criterion]}, seed {seed}": table.xs(criterion, axis=1, level=1).loc[
                "average"
            ]
            for criterion in REPORTED
            for seed, table in per_seed.items()
        }
    ).T
    print(per_seed_average[[m for m in models if m in per_seed_average]].round(3).to_markdown())
    print()
    print(json.dumps({"rows": len(rows), "failed": int(rows["error"].notna().sum())}))


if __name__ == "__main__":
    main()
