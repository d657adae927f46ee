"""The Dagster UI, driven in a real headless browser (Playwright + Debian's Chromium).

What ``make dev`` gives a user is checked end to end: ``dagster dev -w workspace.yaml`` (webserver
and daemon) is started on a free loopback port with a private DAGSTER_HOME (a copy of
deploy/dagster.yaml) and a private conf/ (a local layer roots the storage in the test's tmp dir
and points the benchmark at a tiny rendered suite). Then Chromium

1. opens the global asset lineage page (/asset-groups), expands every group and sees every asset
   of the code location (the list comes from the server's GraphQL API);
2. opens /assets/benchmark_suite, clicks its Materialize button and waits until the page shows
   the materialization with its metadata; GraphQL confirms the run succeeded and the event exists.

Two screenshots (the graph and the materialized asset page) are written to the test's tmp dir and
their paths printed (run with ``-s`` to see them).

Needs /usr/bin/chromium (``apt-get install chromium``; ``make test`` installs it when run as root)
and the ``playwright`` package of the dev extra. Playwright never downloads a browser here: it
launches the system Chromium. Without either the test is skipped, except on CI (CI=true), where
it fails instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import REPO, write_conf
from viva_pipelines.demo_world.suite import SuiteGeometry, build_demo_suite
from viva_pipelines.storage import Storage

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Every asset of the code location; the server's own list must match it.
EXPECTED_ASSETS = {
    "raw_videos",
    "tracked_masks",
    "synthetic_pairs",
    "qc_dataset",
    "instructor_model",
    "sft_checkpoint",
    "reward_models",
    "grpo_lora",
    "benchmark_suite",
    "benchmark_scores",
    "edited_videos",
}
#: The asset materialized from the UI: cheap, no upstream, validates a tiny rendered suite.
TARGET = "benchmark_suite"
SERVER_START_S = 120
RUN_TIMEOUT_S = 120
UI_TIMEOUT_MS = 30_000


def _missing_tool(reason: str) -> None:
    """Skip off CI; on CI (CI=true) a missing browser is a broken setup, so fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: not skipping)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    assert not answer.get("errors"), answer["errors"]
    return answer["data"]


def _stop(server: subprocess.Popen) -> None:
    """Stop ``dagster dev`` and its children (webserver, daemon, code servers, run workers):
    SIGINT to the whole process group, as Ctrl-C in a terminal does (SIGTERM can leave it
    hanging), then SIGKILL to whatever of the group is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=10)


@pytest.fixture
def dagster_dev(project: Path, tmp_path: Path) -> Iterator[int]:
    """``dagster dev`` on a free port with a private instance and conf; yields the port."""
    suite_root = tmp_path / "suite"
    build_demo_suite(Storage(str(suite_root)), per_category=1, geometry=SuiteGeometry(64, 48, 8, 8))
    write_conf(
        project,
        "local",
        "ui_test.yaml",
        {
            "storage": {"root": str(tmp_path / "data")},
            "benchmark": {"root": str(suite_root), "manifest": None},
            # One process per run: the multiprocess executor would add a second interpreter
            # start-up to the run and the test is about the UI, not the executor.
            "execution": {"executor": "in_process"},
        },
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    log_path = tmp_path / "dagster_dev.log"
    env = {**os.environ, "VIVA_CONF_DIR": str(project / "conf"), "DAGSTER_HOME": str(home)}
    env.pop("VIVA_ENV", None)
    command = [
        *(str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml"),
        *("-h", "127.0.0.1", "-p", str(port)),
    ]
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert server.poll() is None, log_path.read_text()[-3000:]
            try:
                # Ready once the code location has loaded, not just the webserver.
                data = _graphql(
                    port,
                    "{ workspaceOrError { ... on Workspace "
                    "{ locationEntries { name loadStatus } } } }",
                )
                entries = data["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (
                f"dagster dev did not load the workspace within {SERVER_START_S} s:\n"
                + log_path.read_text()[-3000:]
            )
            time.sleep(0.5)
        yield port
    finally:
        _stop(server)
        print(f"dagster dev log: {log_path}")


@pytest.fixture
def playwright_api() -> ModuleType:
    """``playwright.sync_api``, once the browser and the package are known to be there (checked
    before the server starts, so a skip costs nothing)."""
    if not CHROMIUM.exists():
        _missing_tool(
            f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium; "
            "`make test` does it when run as root)"
        )
    try:
        import playwright.sync_api
    except ImportError:
        _missing_tool("the playwright package is missing: pip install -e '.[dev]'")
    return playwright.sync_api


@pytest.mark.slow
def test_ui_shows_the_asset_graph_and_materializes_an_asset_from_the_browser(
    playwright_api: ModuleType, dagster_dev: int, tmp_path: Path
):
    expect, sync_playwright = playwright_api.expect, playwright_api.sync_playwright
    port = dagster_dev
    base = f"http://127.0.0.1:{port}"
    nodes = _graphql(port, "{ assetNodes { assetKey { path } } }")["assetNodes"]
    served = {"/".join(node["assetKey"]["path"]) for node in nodes}
    assert served == EXPECTED_ASSETS

    graph_png, asset_png = tmp_path / "ui_asset_graph.png", tmp_path / "ui_asset_materialized.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            # Dismiss the "Join the Dagster community" dialog before it is ever shown.
            context.add_init_script("window.localStorage.setItem('communityNux', '1')")
            context.set_default_timeout(UI_TIMEOUT_MS)
            page = context.new_page()
            _drive_the_ui(page, expect, base, served, port, graph_png, asset_png)
        except Exception:
            # What the browser saw when it went wrong.
            with contextlib.suppress(Exception):
                page.screenshot(path=str(tmp_path / "ui_failure.png"))
                print(f"failure screenshot: {tmp_path / 'ui_failure.png'}")
            raise
        finally:
            browser.close()

    print(f"screenshots: {graph_png} {asset_png}")


def _drive_the_ui(
    page: Any,
    expect: Any,
    base: str,
    served: set[str],
    port: int,
    graph_png: Path,
    asset_png: Path,
) -> None:
    """The browser part of the test: the lineage graph, then a materialization from the UI."""
    # 1. The global asset lineage: groups start collapsed; Alt+E expands them all.
    page.goto(f"{base}/asset-groups")
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    expect(page.get_by_text("benchmark", exact=True).first).to_be_visible()
    page.keyboard.press("Alt+KeyE")
    for name in sorted(served):
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
    page.screenshot(path=str(graph_png))

    # 2. The asset's page: click Materialize (the icon's label is part of its name).
    page.goto(f"{base}/assets/{TARGET}")
    expect(page.get_by_text("Never materialized")).to_be_visible()
    button = page.get_by_role("button", name=re.compile(r"(^|\s)Materialize$"))
    expect(button).to_be_enabled()
    button.click()

    # The page follows the run live: the "Never materialized" tag goes away.
    expect(page.get_by_text("Never materialized")).to_have_count(0, timeout=RUN_TIMEOUT_S * 1000)
    run_id = _wait_for_run(port)  # the run, blocking asset check included
    event = _latest_materialization(port)
    assert event is not None, f"GraphQL has no materialization of {TARGET}"
    assert event["runId"] == run_id
    metadata = {e["label"]: e.get("intValue") for e in event["metadataEntries"]}
    assert metadata["instances"] > 0

    # Reload so the metadata of the new event shows as well: the row "instances | <time>
    # | <count>" of the metadata table must carry the count GraphQL reports.
    page.reload()
    instances_row = page.get_by_role(
        "row", name=re.compile(rf"^instances\b.*\b{metadata['instances']}$")
    )
    expect(instances_row).to_be_visible()
    expect(page.get_by_text("No metadata found")).to_have_count(0)
    page.screenshot(path=str(asset_png))


def _wait_for_run(port: int) -> str:
    """Wait for the run the click launched (the only run of the instance) to succeed."""
    query = "{ runsOrError { ... on Runs { results { runId status } } } }"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        runs = _graphql(port, query)["runsOrError"]["results"]
        if runs:
            assert len(runs) == 1, runs
            status = runs[0]["status"]
            if status == "SUCCESS":
                return runs[0]["runId"]
            assert status not in {"FAILURE", "CANCELED"}, f"the run ended {status}"
        time.sleep(1)
    raise AssertionError(f"no successful run within {RUN_TIMEOUT_S} s (last status: {status})")


def _latest_materialization(port: int) -> dict | None:
    query = """
    query ($path: [String!]!) {
      assetOrError(assetKey: {path: $path}) {
        ... on Asset {
          assetMaterializations(limit: 1) {
            runId
            metadataEntries { label ... on IntMetadataEntry { intValue } }
          }
        }
      }
    }
    """
    asset = _graphql(port, query, {"path": [TARGET]})["assetOrError"]
    events = asset.get("assetMaterializations") or []
    return events[0] if events else None
