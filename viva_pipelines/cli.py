"""``viva``: the command line of viva-pipelines.

- ``viva demo-data``: render the synthetic demo world's source videos and its benchmark suite;
- ``viva ingest``: register new source videos into shards and materialize the per-shard assets
  (``raw_videos`` → ``tracked_masks`` → ``synthetic_pairs``) of every shard that is new or
  grew (what the sensor does, in the foreground);
- ``viva materialize ASSET…``: materialize unpartitioned assets (e.g. ``qc_dataset``) and run
  their checks;
- ``viva edit``: edit a video with a trained model (and LoRA);
- ``viva report``: print the latest benchmark table;
- ``viva lineage TARGET``: the chain from a benchmark run or model back to raw video files;
- ``viva config``: print the resolved configuration of ``VIVA_ENV``;
- ``viva runs clean``: fail the local runs whose worker died and free their pool slots (``viva
  materialize`` and ``viva ingest`` do it before each run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from viva_pipelines.config import ConfigError
from viva_pipelines.config.schema import InferenceSettings
from viva_pipelines.settings import PACKAGE_DIR, get_settings, settings_with

#: Run logs stay in the Dagster instance (the UI shows them); the terminal gets our summary.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _demo_data(args: argparse.Namespace) -> int:
    from viva_pipelines.config.schema import DemoSettings, is_remote
    from viva_pipelines.demo_world import generate_demo_videos
    from viva_pipelines.demo_world.suite import SuiteGeometry, build_demo_suite
    from viva_pipelines.storage import Storage

    # Each flag but --out and --suite-per-category is its demo.* setting.
    settings = _settings_with_flags(args, "demo", DemoSettings.model_fields)
    demo = settings.demo
    out = args.out or settings.sources.raw_videos.uri
    if is_remote(out):
        print(
            f"viva: demo-data writes to a local folder; {out} is remote, pass --out",
            file=sys.stderr,
        )
        return 2
    if Path(out).exists() and not Path(out).is_dir():
        print(f"viva: demo-data writes into a folder; {out} is a file", file=sys.stderr)
        return 2
    suite_root = settings.benchmark.root
    if args.suite_per_category and is_remote(suite_root):
        print(
            f"viva: demo-data renders the benchmark suite into a local folder; {suite_root} is "
            "remote, pass --suite-per-category 0",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    geometry = SuiteGeometry(demo.width, demo.height, demo.frames, demo.fps)
    paths = generate_demo_videos(
        out,
        demo.videos,
        demo.seed,
        width=geometry.width,
        height=geometry.height,
        num_frames=geometry.frames,
        fps=geometry.fps,
    )
    print(
        f"wrote {len(paths)} demo videos with annotations to {out} "
        f"in {time.perf_counter() - started:.1f}s"
    )
    _write_demo_requests(settings, [Path(p) for p in paths])
    _write_image_pairs(settings)
    if args.suite_per_category:
        started = time.perf_counter()
        instances = build_demo_suite(
            Storage(suite_root), per_category=args.suite_per_category, geometry=geometry
        )
        print(
            f"wrote the demo benchmark suite ({len(instances)} instances) to {suite_root} "
            f"in {time.perf_counter() - started:.1f}s"
        )
    return 0


def _settings_with_flags(args: argparse.Namespace, section: str, keys: Iterable[str]):
    """This process's settings with each flag of ``keys`` that ``args`` gives (a flag whose
    ``dest`` is the setting's name) set as ``<section>.<key>``, validated as the configuration
    is: an error names ``viva <command>'s flags`` and the setting."""
    given = {f"{section}.{key}": getattr(args, key, None) for key in keys}
    return settings_with(
        {key: value for key, value in given.items() if value is not None},
        f"viva {args.command}'s flags",
    )


def _write_demo_requests(settings, videos: list[Path]) -> None:
    """A few edit requests over the demo videos at ``inference.requests`` (what
    ``edited_videos`` edits), when that file is local and the videos are under
    ``inference.root``."""
    from viva_pipelines.config.schema import is_remote
    from viva_pipelines.demo_world.dataset import demo_edit_requests

    cfg = settings.inference
    root = Path(cfg.root).resolve()
    if cfg.requests is None or is_remote(cfg.requests) or is_remote(cfg.root):
        return
    if not all(video.resolve().is_relative_to(root) for video in videos):
        print(f"no demo edit requests: the videos are not under inference.root {cfg.root}")
        return
    requests = demo_edit_requests([v.resolve() for v in videos], root)
    target = Path(cfg.requests)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps(r) + "\n" for r in requests))
    print(f"wrote {len(requests)} demo edit requests to {target}")


def _write_image_pairs(settings) -> None:
    """The demo's external image-editing pairs at ``qc.image_manifest`` (what ``qc_dataset``
    adds to the image share of SFT; ``demo.image_pair_scenes`` scenes), when that file is
    local."""
    from viva_pipelines.config.schema import is_remote
    from viva_pipelines.embedded.instructor_corpus import write_image_pairs
    from viva_pipelines.storage import Storage

    manifest = settings.qc.image_manifest
    scenes = settings.demo.image_pair_scenes
    if not scenes:
        return
    if manifest is None or is_remote(manifest):
        print(
            f"no demo image pairs: qc.image_manifest is {manifest or 'not set'}, not a local file"
        )
        return
    started, path = time.perf_counter(), Path(manifest)
    count = write_image_pairs(Storage(str(path.parent)), path.name, scenes)
    print(
        f"wrote {count} image-editing pairs of {scenes} scenes to {path} "
        f"in {time.perf_counter() - started:.1f}s"
    )


def _ingest(args: argparse.Namespace) -> int:
    from viva_pipelines.defs.console import console_logger
    from viva_pipelines.defs.jobs import SHARD_JOB
    from viva_pipelines.defs.partitions import video_shards
    from viva_pipelines.ingest.raw_videos import manifest_key, shard_is_current
    from viva_pipelines.ingest.shards import load_skipped, scan_and_register, shard_members
    from viva_pipelines.ingest.sources import skipped_text
    from viva_pipelines.pairs.shard import manifest_key as pairs_manifest_key

    settings, defs = _definitions()
    storage = defs.resources["storage"].get()
    source = defs.resources["video_source"].get()
    storage.check_reachable()
    source.check_reachable()
    s3_client = defs.resources["s3"].get_client() if source.is_remote else None
    registry, new = scan_and_register(
        storage,
        source,
        settings.sources.raw_videos.extensions,
        settings.ingest.shard_size,
        s3_client=s3_client,
    )
    print(
        f"source {source.root_uri}: {len(registry)} videos in {registry['shard'].nunique()} "
        f"shards ({len(new)} new); skipped {skipped_text(load_skipped(storage))}"
    )
    if registry.empty:
        print("nothing to ingest; put videos in the source or run `viva demo-data`")
        return 0

    instance = _dagster_instance()
    known = set(instance.get_dynamic_partitions(video_shards.name))
    shards = sorted(registry["shard"].unique())
    instance.add_dynamic_partitions(video_shards.name, [s for s in shards if s not in known])
    pending = [
        s
        for s in shards
        if args.all
        or not shard_is_current(storage, s, shard_members(registry, s))
        or not storage.exists(pairs_manifest_key(s))
    ]
    job = defs.resolve_job_def(SHARD_JOB).with_logger_defs({"console": console_logger})
    pools = {node.definition.pool for node in job.graph.nodes} - {None}
    failed = []
    for shard in pending:
        started = time.perf_counter()
        result = _execute(
            instance,
            lambda tags, shard=shard: job.execute_in_process(
                partition_key=shard,
                instance=instance,
                raise_on_error=False,
                run_config=QUIET,
                tags=tags,
            ),
            pools,
        )
        if not result.success:
            failed.append(shard)
            print(f"{shard}: FAILED (see `make dev`, run {result.run_id})")
            continue
        manifest = storage.read_parquet(manifest_key(shard))
        ok = int((manifest["status"] == "ok").sum())
        pair_status = storage.read_parquet(pairs_manifest_key(shard))["status"]
        failures = int((pair_status == "failed").sum())
        print(
            f"{shard}: {ok} videos ok, {len(manifest) - ok} rejected, "
            f"{int((pair_status == 'ok').sum())} edit pairs"
            + (f" ({failures} failed, see the manifest)" if failures else "")
            + f" in {time.perf_counter() - started:.1f}s"
        )
    print(f"{len(pending)} shards materialized, {len(shards) - len(pending)} already current")
    return 1 if failed else 0


def _materialize(args: argparse.Namespace) -> int:
    import dagster as dg

    from viva_pipelines.defs.console import console_logger

    _, defs = _definitions()
    refused = _not_materializable(defs.resolve_asset_graph(), args.assets)
    if refused:
        print(f"viva materialize: {refused}", file=sys.stderr)
        return 2
    defs.resources["storage"].get().check_reachable()
    instance = _dagster_instance()
    selection = [dg.AssetKey(name) for name in args.assets]
    job = defs.resolve_implicit_global_asset_job_def().with_logger_defs({"console": console_logger})
    pools = {defs.resolve_assets_def(key).op.pool for key in selection} - {None}
    started = time.perf_counter()
    result = _execute(
        instance,
        lambda tags: job.execute_in_process(
            asset_selection=selection,
            instance=instance,
            raise_on_error=False,
            run_config=QUIET,
            tags=tags,
        ),
        pools,
    )
    for check in result.get_asset_check_evaluations():
        status = "passed" if check.passed else "FAILED"
        print(f"check {check.asset_check_key.name}: {status} ({check.metadata['result'].value})")
    outcome = "materialized" if result.success else "FAILED"
    print(
        f"{', '.join(args.assets)} {outcome} in {time.perf_counter() - started:.1f}s "
        f"(run {result.run_id})"
    )
    if len(selection) > 1:
        steps = sorted(
            (
                step
                for step in instance.get_run_step_stats(result.run_id)
                if step.step_key in args.assets and step.start_time and step.end_time
            ),
            key=lambda step: step.start_time,
        )
        print("  " + ", ".join(f"{s.step_key} {s.end_time - s.start_time:.1f}s" for s in steps))
    return 0 if result.success else 1


def _not_materializable(graph, names: list[str]) -> str | None:
    """Why ``viva materialize`` cannot run ``names`` (one line naming them and what it can
    run), or None: each must be an asset of the graph and not partitioned (the per-shard assets
    are materialized by ``viva ingest``, shard by shard)."""
    nodes = {key.to_user_string(): graph.get(key) for key in graph.get_all_asset_keys()}
    unknown = [name for name in names if name not in nodes]
    sharded = sorted(name for name, node in nodes.items() if node.is_partitioned)
    asked_sharded = [name for name in names if name in sharded]
    runnable = sorted(
        name for name, node in nodes.items() if node.is_materializable and not node.is_partitioned
    )
    if unknown:
        return f"no asset named {', '.join(unknown)}; assets: {', '.join(runnable)}"
    if asked_sharded:
        return (
            f"{', '.join(asked_sharded)}: partitioned by shard ({', '.join(sharded)}); "
            "`viva ingest` materializes them"
        )
    return None


def _execute(instance, run: Callable[[dict[str, str]], Any], pools: set[str]) -> Any:
    """``run(tags)`` (an ``execute_in_process``) with crash recovery around it.

    Before: the runs of workers that died (killed, OOM) are failed and their pool slots freed,
    and the CLI says whom a full pool makes it wait for. During: the run executes in a thread,
    so SIGINT/SIGTERM reach this process at once even while Dagster waits for a pool slot (it
    defers interrupts to step boundaries of the main thread); on a signal the run is failed, its
    slots freed and the process exits; its training processes stop with it (their watchdog).
    """
    from viva_pipelines.defs.runs import WORKER_TAG, pool_waits, release_dead_runs, worker_tags

    for line in [*release_dead_runs(instance), *pool_waits(instance, pools)]:
        print(line, flush=True)
    tags = worker_tags()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = run(tags)
        except BaseException as exc:  # re-raised in the main thread
            outcome["error"] = exc

    def stop(signum: int, _frame: Any) -> None:
        print(
            f"viva: {signal.Signals(signum).name}: stopping; a retry resumes training from its"
            " last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        for line in release_dead_runs(instance, ending=tags[WORKER_TAG]):
            print(line, flush=True)
        os._exit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    worker = threading.Thread(target=target, name="viva-run", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _runs_clean(args: argparse.Namespace) -> int:
    from viva_pipelines.defs.runs import release_dead_runs

    done = release_dead_runs(_dagster_instance())
    print("\n".join(done) if done else "nothing to clean: no dead run holds a run or a slot")
    return 0


def _edit(args: argparse.Namespace) -> int:
    import av

    # The request and the model are checked before the model libraries are imported (seconds).
    from viva_pipelines.model.requests import EditRequestError, check_request, resolve_model
    from viva_pipelines.tracking import TrackingServerUnreachable, use_s3_endpoint

    single = [args.video, args.instruction, args.out]
    if bool(args.batch) == any(single) or (not args.batch and not all(single)):
        print("viva edit: give --video, --instruction and --out, or --batch", file=sys.stderr)
        return 2
    try:
        if not args.batch:
            check_request(
                args.video, args.instruction, args.out, args.reference, overwrite=args.overwrite
            )
        elif not Path(args.batch).is_file():
            raise EditRequestError(f"requests {args.batch}: no such file")
        settings = _settings_with_flags(args, "inference", InferenceSettings.EDIT_OPTIONS)
        options = settings.inference.edit_options()
        use_s3_endpoint(settings.storage.s3.endpoint_url)
        tracking_uri = settings.mlflow_tracking_uri
        model_dir = resolve_model(args.model, tracking_uri=tracking_uri)
        lora = args.lora and resolve_model(args.lora, tracking_uri=tracking_uri, lora=True)
        if args.batch:
            return _edit_batch(args, model_dir, lora, options)
        from viva_pipelines.model.whole_video import edit_video

        edited = edit_video(
            model_dir,
            args.video,
            args.instruction,
            args.out,
            lora=lora or None,
            reference=args.reference,
            overwrite=args.overwrite,
            **options,
        )
    except (EditRequestError, FileNotFoundError, TrackingServerUnreachable, ValueError) as exc:
        print(f"viva edit: {exc}", file=sys.stderr)
        return 2
    except av.FFmpegError as exc:
        # A source that stops decoding is an EditRequestError by now: what is left is FFmpeg
        # failing on the output (an encoder or muxer error).
        where = "" if args.batch else f"{args.video} -> {args.out}: "
        print(f"viva edit: {where}FFmpeg failed ({exc})", file=sys.stderr)
        return 2
    print(
        f"wrote {edited.path}: {edited.frames} frames of {edited.width}x{edited.height} at"
        f" {edited.fps:g} fps{' with audio' if edited.has_audio else ''}"
        f" ({edited.windows} window{'s' * (edited.windows != 1)}, {edited.seconds:.1f}s)"
    )
    return 0


def _edit_batch(args: argparse.Namespace, model_dir: Path, lora, options: dict) -> int:
    """``viva edit --batch``: every request, one line of outcome each, the model loaded once;
    the outcomes also go to ``<requests>.results.jsonl``. Exit 1 when any request failed."""
    from viva_pipelines.model.pipeline import VivaEditPipeline
    from viva_pipelines.model.whole_video import beside, edit_batch, outcome_line

    def load() -> VivaEditPipeline:
        pipeline = VivaEditPipeline.from_pretrained(model_dir)
        return pipeline.load_lora(lora) if lora else pipeline

    def say(result: dict) -> None:
        print(outcome_line(result), flush=True)

    requests = Path(args.batch)
    results = edit_batch(
        load,
        # utf-8-sig: the byte-order mark some Windows editors write first is not text
        requests.read_text(encoding="utf-8-sig").splitlines(),
        beside(requests.parent),
        overwrite=args.overwrite,
        on_result=say,
        **options,
    )
    report = requests.with_suffix(".results.jsonl")
    report.write_text("".join(json.dumps(r) + "\n" for r in results))
    failed = sum(r["status"] != "ok" for r in results)
    print(f"{len(results) - failed} edited, {failed} failed; outcomes in {report}")
    return 1 if failed else 0


def _definitions():
    from viva_pipelines.definitions import build_definitions

    settings = get_settings()
    return settings, build_definitions(settings)


def _dagster_instance():
    """The instance under ``$DAGSTER_HOME``, else the project's ``.dagster/`` (what ``make dev``
    uses), so runs started here show up in the UI. A new home gets ``deploy/dagster.yaml``."""
    import dagster as dg

    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(PACKAGE_DIR.parent / ".dagster")
        print(f"DAGSTER_HOME not set; using {os.environ['DAGSTER_HOME']}")
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    template = PACKAGE_DIR.parent / "deploy" / "dagster.yaml"
    if not (home / "dagster.yaml").exists() and template.exists():
        shutil.copyfile(template, home / "dagster.yaml")
    return dg.DagsterInstance.get()


def _report(args: argparse.Namespace) -> int:
    import dagster as dg

    instance = _dagster_instance()
    event = instance.get_latest_materialization_event(dg.AssetKey("benchmark_scores"))
    if event is None or event.asset_materialization is None:
        print("viva report: benchmark_scores has not been materialized yet", file=sys.stderr)
        return 1
    metadata = event.asset_materialization.metadata
    print(f"## Benchmark ({metadata['instances'].value} instances; {metadata['models'].value})\n")
    print(metadata["report"].value)
    print(f"\nsanity: {metadata['sanity'].value}; failed edits: {metadata['failed_edits'].value}")
    print(f"scores: {metadata['scores'].value}")
    return 0


def _lineage(args: argparse.Namespace) -> int:
    import mlflow

    from viva_pipelines.defs.lineage import LineageError, build_lineage, resolve_target
    from viva_pipelines.storage import Storage
    from viva_pipelines.tracking import TrackingServerUnreachable, check_reachable, use_s3_endpoint

    settings = get_settings()
    instance = _dagster_instance()
    s3 = settings.storage.s3
    use_s3_endpoint(s3.endpoint_url)
    storage = Storage(
        settings.storage.root, endpoint_url=s3.endpoint_url, region_name=s3.region_name
    )
    tracking_uri = settings.mlflow_tracking_uri
    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:  # MLflow's own client would retry for minutes on every run the tree shows
        check_reachable(tracking_uri)
    except TrackingServerUnreachable as exc:
        print(f"viva lineage: {exc}; the tree leaves out what MLflow records", file=sys.stderr)
        client = None
    try:
        record = resolve_target(instance, args.target, client)
        tree = build_lineage(instance, record, storage, client)
    except LineageError as exc:
        print(f"viva lineage: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(tree.to_dict(), indent=1) if args.json else tree.render())
    return 0


def _config(args: argparse.Namespace) -> int:
    if args.reference:
        from viva_pipelines.config.reference import configuration_reference
        from viva_pipelines.config.schema import Settings

        print(configuration_reference(Settings), end="")
        return 0
    print(yaml.safe_dump(get_settings().model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from viva_pipelines.train.sizing import plan_grpo, plan_sft, plan_table

    settings = get_settings()
    plans = [plan_sft(settings), plan_grpo(settings)]
    print(f"# Training steps of the {settings.env} profile, per GPU\n")
    print(plan_table(plans, gpu_gib=args.gpu_gib, gpu_tflops=args.gpu_tflops))
    return 0


def _rehearsal_models(args: argparse.Namespace) -> int:
    from viva_pipelines.embedded.rehearsal import write_rehearsal_models

    written = write_rehearsal_models(args.out, seed=args.seed)
    for entry, path in written.items():
        print(f"models.{entry}: {path}")
    return 0


def _vlm_serve(args: argparse.Namespace) -> int:
    from viva_pipelines.vlm.base import VlmError
    from viva_pipelines.vlm.client import read_api_key
    from viva_pipelines.vlm.local import LocalLlavaBackend
    from viva_pipelines.vlm.server import make_server

    try:
        api_key = read_api_key(args.api_key_env)
        backend = LocalLlavaBackend(
            args.model, device=args.device, max_new_tokens=args.max_new_tokens, model_name=args.name
        )
    except VlmError as exc:
        print(f"viva vlm-serve: {exc}", file=sys.stderr)
        return 2
    try:
        server = make_server(backend, args.host, args.port, api_key=api_key)
    except OSError as exc:  # the address is taken, or not this machine's
        print(f"viva vlm-serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"serving {backend.model_id} on http://{host}:{port}/v1", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _count(text: str) -> int:
    """A whole number, 0 or more (argparse type)."""
    number = int(text)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


def _positive(text: str) -> float:
    """A finite number above 0 (argparse type)."""
    number = float(text)
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return number


def _port(text: str) -> int:
    """A TCP port number, 0 to 65535 (argparse type)."""
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0 to 65535)")
    return port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="viva", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo-data", help="render the synthetic demo world's videos")
    demo.add_argument("--out", help="folder to write into (default: sources.raw_videos.uri)")
    demo.add_argument("--videos", type=int, help="how many (default: demo.videos)")
    demo.add_argument("--seed", type=int, help="world seed (default: demo.seed)")
    demo.add_argument("--width", type=int, help="frame width, even (default: demo.width)")
    demo.add_argument("--height", type=int, help="frame height, even (default: demo.height)")
    demo.add_argument("--frames", type=int, help="frames per video (default: demo.frames)")
    demo.add_argument("--fps", type=float, help="frame rate (default: demo.fps)")
    demo.add_argument(
        "--suite-per-category",
        type=_count,
        default=4,
        help="benchmark instances per category rendered into benchmark.root (0: none)",
    )
    demo.add_argument(
        "--image-pair-scenes",
        type=int,
        help="scenes rendered as image-editing pairs at qc.image_manifest (default: "
        "demo.image_pair_scenes; 0: none)",
    )
    demo.set_defaults(handler=_demo_data)
    ingest = commands.add_parser("ingest", help="register new videos and materialize raw_videos")
    ingest.add_argument("--all", action="store_true", help="re-ingest shards already current")
    ingest.set_defaults(handler=_ingest)
    materialize = commands.add_parser("materialize", help="materialize unpartitioned assets")
    materialize.add_argument("assets", nargs="+", help="asset names, e.g. qc_dataset")
    materialize.set_defaults(handler=_materialize)
    edit = commands.add_parser("edit", help="edit a video with a trained model")
    edit.add_argument(
        "--model", required=True, help="model directory or MLflow URI (models:/viva-sft/1)"
    )
    edit.add_argument(
        "--lora", help="an Edit-GRPO LoRA: directory or MLflow URI (models:/viva-grpo-lora/1)"
    )
    edit.add_argument("--video", help="input video file")
    edit.add_argument("--instruction", help='e.g. "Remove the red ball."')
    edit.add_argument("--reference", help="reference image for ref_add / ref_swap edits")
    edit.add_argument("--out", help="output MP4")
    edit.add_argument(
        "--batch", help='a JSONL file of {"video", "instruction", "reference"?, "out"} lines'
    )
    # Each sets inference.<dest> (`viva config --reference`), validated as the configuration.
    edit.add_argument(
        "--steps",
        dest="num_steps",
        type=int,
        help="sampling steps (inference.num_steps; default: the model's)",
    )
    edit.add_argument(
        "--guidance",
        dest="guidance_scale",
        type=float,
        help="instruction guidance scale (inference.guidance_scale; default: the model's)",
    )
    edit.add_argument("--seed", type=int, help="start noise of every window (inference.seed)")
    edit.add_argument("--crf", type=int, help="H.264 quality, 0-51, lower = better (inference.crf)")
    edit.add_argument(
        "--preserve-unchanged",
        action=argparse.BooleanOptionalAction,
        help="keep the original full-resolution pixels wherever the model changed nothing "
        "(inference.preserve_unchanged, on by default); --no-preserve-unchanged: the whole "
        "crop is the model's edit, scaled up",
    )
    edit.add_argument(
        "--window-batch",
        type=int,
        help="windows edited per model call, more: faster on a GPU, more memory "
        "(inference.window_batch)",
    )
    edit.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    edit.set_defaults(handler=_edit)
    commands.add_parser("report", help="print the latest benchmark table").set_defaults(
        handler=_report
    )
    lineage = commands.add_parser(
        "lineage", help="audit what produced a benchmark run, a model or an asset"
    )
    lineage.add_argument(
        "target",
        help="benchmark | an asset name | models:/viva-sft/3 | runs:/<mlflow run id> | <run id>",
    )
    lineage.add_argument("--json", action="store_true", help="print JSON instead of a tree")
    lineage.set_defaults(handler=_lineage)
    config = commands.add_parser("config", help="print the resolved configuration")
    config.add_argument(
        "--reference",
        action="store_true",
        help="print every key's type, default, bounds and meaning instead (Markdown)",
    )
    config.set_defaults(handler=_config)
    plan = commands.add_parser(
        "plan", help="per-GPU memory and FLOPs of the profile's training steps (no GPU needed)"
    )
    plan.add_argument("--gpu-gib", type=_positive, default=80.0, help="GPU memory to check against")
    plan.add_argument(
        "--gpu-tflops", type=_positive, default=989.0, help="the GPU's dense bf16 TFLOP/s (H100)"
    )
    plan.set_defaults(handler=_plan)
    serve = commands.add_parser(
        "vlm-serve", help="serve a local LLaVA over the OpenAI chat-completions protocol"
    )
    serve.add_argument("--model", required=True, help="a LLaVA checkpoint folder")
    serve.add_argument("--name", help="the model id it answers as (default: the folder's name)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000, help="0: any free port (printed)")
    serve.add_argument("--device", default="cpu")
    serve.add_argument("--max-new-tokens", type=int, default=512)
    serve.add_argument("--api-key-env", help="require the key in this environment variable")
    serve.set_defaults(handler=_vlm_serve)
    rehearsal = commands.add_parser(
        "rehearsal-models",
        help="write the rehearsal profile's tiny models in the production checkpoint formats",
    )
    rehearsal.add_argument(
        "--out", default="data/rehearsal/models", help="folder (default: conf/rehearsal's)"
    )
    rehearsal.add_argument("--seed", type=int, default=0)
    rehearsal.set_defaults(handler=_rehearsal_models)
    runs = commands.add_parser("runs", help="local Dagster runs").add_subparsers(
        dest="runs_command", required=True
    )
    runs.add_parser(
        "clean", help="fail runs whose worker died and free the pool slots they hold"
    ).set_defaults(handler=_runs_clean)
    args = parser.parse_args(argv)
    from viva_pipelines.storage import StorageUnreachable

    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"viva: {exc}", file=sys.stderr)
        return 2
    except StorageUnreachable as exc:
        print(f"viva {args.command}: {exc}", file=sys.stderr)
        return 1


def run() -> None:
    """The ``viva`` console script. Exits without interpreter teardown: every command has
    written and flushed its results by then, and native threads of the video and tensor
    libraries can abort the process while modules are torn down (rarely, but after a
    successful run, turning exit code 0 into a crash)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
