"""Security properties: no unsafe deserialisation, secrets stay secret, paths stay confined,
and nothing in bench/ or tests/ reaches beyond loopback."""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.chat_server import API_KEY, KEY_ENV, ChatServer
from tests.conftest import REPO
from viva_pipelines.cli import main
from viva_pipelines.evaluation.suite import SuiteError, load_suite
from viva_pipelines.qc.dataset import REJECTED
from viva_pipelines.qc.external import external_image_rows
from viva_pipelines.storage import PathEscapeError, Storage, normalise_key
from viva_pipelines.train.config import GrpoConfig, SftConfig
from viva_pipelines.vlm import ChatCompletionsClient, DirectoryStore, RetryPolicy

PACKAGE = REPO / "viva_pipelines"
SENTINELS = {
    "AWS_SECRET_ACCESS_KEY": "sentinel-aws-9f3c1e",
    "OPENAI_API_KEY": "sentinel-openai-77ab2d",
    "VIVA_VLM_API_KEY": "sentinel-vlm-5c0ffee",
    "MLFLOW_TRACKING_TOKEN": "sentinel-mlflow-1d2e3f",
}


# -- no unsafe deserialisation ------------------------------------------------------------------
def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a Name/Attribute chain, '' for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str, filename: str = "<string>") -> list[str]:
    """Calls that deserialise untrusted bytes into arbitrary objects, as ``file:line what``.

    Aliases are followed (``import pickle as p``, ``from torch import load``), so renaming an
    import does not hide a call.
    """
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> canonical dotted name
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if not name:
            continue
        head, _, rest = name.partition(".")
        canonical = aliases.get(head, head) + (f".{rest}" if rest else "")
        canonical = canonical.replace("numpy.", "np.").replace("pandas.", "pd.")
        where = f"{filename}:{node.lineno}"
        if canonical in (
            "pickle.load",
            "pickle.loads",
            "cPickle.load",
            "cPickle.loads",
            "dill.load",
            "dill.loads",
            "joblib.load",
            "marshal.loads",
            "shelve.open",
            "pickle.Unpickler",
        ):
            found.append(f"{where} {canonical}")
        elif canonical == "torch.load" and not _is_true(_keyword(node, "weights_only")):
            found.append(f"{where} torch.load without weights_only=True")
        elif canonical == "np.load" and _is_true(_keyword(node, "allow_pickle")):
            found.append(f"{where} np.load(allow_pickle=True)")
        elif canonical.endswith("read_pickle") or canonical.endswith(".from_pickle"):
            found.append(f"{where} {canonical}")
        elif canonical in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            found.append(f"{where} {canonical} (use yaml.safe_load)")
    return found


def test_the_scanner_finds_each_unsafe_form():
    source = """
import pickle, torch, yaml
import numpy as np
import pandas as pd
import pickle as pk
from torch import load as tload
pickle.loads(b"")
pk.load(f)
torch.load("x")
torch.load("x", weights_only=False)
tload("x")
np.load("x", allow_pickle=True)
pd.read_pickle("x")
yaml.load(s)
torch.load("x", weights_only=True)
np.load("x")
yaml.safe_load(s)
"""
    found = unsafe_calls(source)
    assert [line.split(" ", 1)[0] for line in found] == [
        f"<string>:{n}" for n in (7, 8, 9, 10, 11, 12, 13, 14)
    ], found


def test_no_unsafe_deserialisation_in_the_package():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    found = [hit for path in files for hit in unsafe_calls(path.read_text(), str(path))]
    assert found == []


# -- secrets: env only, never in reprs, logs, caches or params ----------------------------------
def _files_text(root: Path) -> str:
    return "".join(p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file())


def test_vlm_key_stays_out_of_repr_logs_errors_and_cache(
    server: ChatServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
):
    from tests.chat_server import Reply

    monkeypatch.setenv(KEY_ENV, API_KEY)
    cache = tmp_path / "cache"
    client = ChatCompletionsClient(
        server.base_url,
        "test-vlm",
        api_key_env=KEY_ENV,
        retry=RetryPolicy(max_attempts=2, backoff_s=0.01, max_backoff_s=0.05),
        cache=DirectoryStore(cache),
    )
    caplog.set_level(logging.DEBUG)
    answer = client.complete_json([{"role": "user", "content": "hi"}], lambda data: data)
    assert answer["keep"] is True
    # The key really was sent (so the checks below are not vacuous)...
    assert server.requests[-1].headers["Authorization"] == f"Bearer {API_KEY}"
    # ...and is in none of these.
    assert API_KEY not in repr(client) and API_KEY not in str(client)
    assert API_KEY not in client.describe() and API_KEY not in json.dumps(client.params)
    assert list(cache.rglob("*")), "the answer should have been cached"
    assert API_KEY not in _files_text(cache)
    assert all(API_KEY not in p.name for p in cache.rglob("*"))

    # A server that echoes the rejected credential: the key must not reach logs or errors.
    server.script = [Reply(status=503, body=f'{{"error": "down; key {API_KEY}"}}')]
    with pytest.raises(Exception) as raised:
        client.complete_json([{"role": "user", "content": "again"}], lambda data: data)
    assert "down; key" in str(raised.value)  # the body is quoted...
    assert API_KEY not in str(raised.value)  # ...without the key
    assert any("retrying" in record.getMessage() for record in caplog.records)
    assert all(API_KEY not in record.getMessage() for record in caplog.records)
    assert API_KEY not in caplog.text


def test_missing_vlm_key_fails_naming_the_variable_not_a_value(monkeypatch: pytest.MonkeyPatch):
    from viva_pipelines.vlm import VlmError

    monkeypatch.delenv("VIVA_TEST_ABSENT_KEY", raising=False)
    with pytest.raises(VlmError, match="VIVA_TEST_ABSENT_KEY"):
        ChatCompletionsClient("http://127.0.0.1:9/v1", "m", api_key_env="VIVA_TEST_ABSENT_KEY")


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in SENTINELS.items():
        monkeypatch.setenv(name, value)
    return SENTINELS


def _assert_no_sentinel(text: str) -> None:
    for name, value in SENTINELS.items():
        assert value not in text, f"{name}'s value leaked"


def test_training_params_hold_no_env_secret(secret_env, make_settings):
    from viva_pipelines.train.runs import sft_config

    settings_ = make_settings()
    sft = sft_config(settings_, "v1")
    params = sft.flat_params()
    assert "optim.lr" in params and len(params) > 20
    _assert_no_sentinel(json.dumps(params, default=str))
    _assert_no_sentinel(sft.model_dump_json())
    grpo = GrpoConfig.from_mapping(
        {
            "output_prefix": "runs/grpo",
            "data": {"storage_root": "/tmp/r"},
            "sft_model": "m",
            "sft_cache": "c",
        }
    )
    _assert_no_sentinel(json.dumps(grpo.flat_params(), default=str))
    _assert_no_sentinel(grpo.model_dump_json())


def test_mlflow_log_params_receives_no_env_secret(secret_env, monkeypatch: pytest.MonkeyPatch):
    import mlflow

    from viva_pipelines.tracking import log_params

    logged: dict[str, Any] = {}
    monkeypatch.setattr(mlflow, "log_params", lambda params: logged.update(params))
    config = SftConfig.from_mapping(
        {"output_prefix": "runs/sft", "data": {"storage_root": "/tmp/r"}, "model": {}}
    )
    log_params(config.flat_params())
    assert logged and "data.storage_root" in logged
    _assert_no_sentinel(json.dumps(logged))


def test_viva_config_output_holds_no_env_secret(
    secret_env, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.setenv("VIVA_CONF_DIR", str(project / "conf"))
    for env in ("base", "prod"):
        monkeypatch.setenv("VIVA_ENV", env)
        assert main(["config"]) == 0
        out = capsys.readouterr().out
        assert "api_key_env" in out  # the variable's name is shown...
        _assert_no_sentinel(out)  # ...never its value


# -- path confinement ---------------------------------------------------------------------------
ESCAPES = [
    "../x",
    "a/../../x",
    "/etc/passwd",
    "\\\\server\\share",
    "C:/x",
    "s3://other/x",
    "file:///etc/passwd",
    "..",
    ".",
    "",
    "a/..",
    "a\\..\\..\\x",
    "a\x00b",
]
_segments = st.sampled_from(["a", "b", "..", ".", "", "c.png", "~", "..."])
_paths = st.one_of(
    st.lists(_segments, min_size=1, max_size=6).map("/".join),
    st.lists(_segments, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    st.text(alphabet="ab./\\:~\x00", max_size=12),
)


def _depth_escapes(key: str) -> bool:
    """Whether a clean POSIX walk of ``key`` ever goes above its start, or names the start."""
    depth, named = 0, False
    for part in key.split("/"):
        if part in ("", "."):
            continue
        depth = depth - 1 if part == ".." else depth + 1
        named = True
        if depth < 0:
            return True
    return not named or depth == 0


@pytest.mark.parametrize("key", ESCAPES)
def test_storage_refuses_keys_that_leave_the_root(tmp_path: Path, key: str):
    storage = Storage(str(tmp_path / "root"))
    with pytest.raises(PathEscapeError):
        storage.write_bytes(key, b"x")
    with pytest.raises(PathEscapeError):
        storage.read_bytes(key)
    assert not (tmp_path / "x").exists()


def test_storage_refuses_a_symlink_out_of_the_root(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    storage = Storage(str(root))
    for action in (
        lambda: storage.read_bytes("link/secret.txt"),
        lambda: storage.write_bytes("link/new.txt", b"x"),
        lambda: storage.exists("link/secret.txt"),
    ):
        with pytest.raises(PathEscapeError, match="symlink"):
            action()
    assert not (outside / "new.txt").exists()


@settings(max_examples=200, deadline=None)
@given(key=_paths)
@example(key="./://")  # a URL after a harmless prefix: refused, and for that reason
def test_normalise_key_property(key: str):
    try:
        clean = normalise_key(key)
    except PathEscapeError:
        assert (
            _depth_escapes(key)
            or key.startswith(("/", "\\"))
            or "\\" in key
            or "://" in key  # a URL, e.g. ./s3://bucket: never a relative key
            or ":" in key[:2]
            or "\x00" in key
        ), key
    else:
        assert not _depth_escapes(key) and not key.startswith(("/", "\\")), key
        assert "://" not in key, key
        assert ".." not in clean.split("/") and not clean.startswith("/") and clean
        assert "\x00" not in clean and "\\" not in clean


_FUZZ = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_FUZZ
@given(path=st.one_of(st.sampled_from(ESCAPES), _paths))
def test_suite_loader_refuses_escaping_paths(tmp_path: Path, path: str):
    storage = Storage(str(tmp_path))
    row = {
        "id": "a",
        "category": "swap",
        "source_video": path,
        "instruction": "i",
        "source_caption": "s",
        "target_caption": "t",
    }
    storage.write_bytes("suite.jsonl", json.dumps(row).encode())
    try:
        (instance,) = load_suite(storage, "suite.jsonl", check_files=False)
    except SuiteError as exc:
        assert "suite.jsonl line 1" in str(exc)
    else:
        assert instance.source_video == normalise_key(path)
        assert not _depth_escapes(path)


@_FUZZ
@given(path=st.one_of(st.sampled_from(ESCAPES), _paths))
def test_external_manifest_refuses_escaping_paths(tmp_path: Path, path: str):
    folder = tmp_path / "manifests" / "inner"
    folder.mkdir(parents=True, exist_ok=True)
    # A file one level up from the manifest folder, where "../x" would land.
    (tmp_path / "manifests" / "x").write_bytes(b"outside")
    line = {"id": "p", "source": path, "target": path, "instruction": "do it"}
    (folder / "pairs.jsonl").write_text(json.dumps(line))
    (row,) = external_image_rows(
        Storage(str(tmp_path / "root")), str(folder / "pairs.jsonl"), val_fraction=0, split_seed=0
    )
    assert row["status"] == REJECTED  # the folder holds no such file, so never accepted
    if path and (_depth_escapes(path) or path.startswith(("/", "\\")) or "\x00" in path):
        assert "leaves the manifest's folder" in row["reason"], row  # refused, never read


# -- bench/ and tests/ stay on loopback ---------------------------------------------------------
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0"}
#: Hosts that appear only as strings in config, parser or redaction tests; nothing connects to
#: them (the suite runs offline). Each one is listed with the reason it is allowed.
ALLOWED_FAKE_HOSTS = {
    "example.com": "RFC 2606 reserved name, used as a placeholder URL",
    "vllm.mlops.svc.cluster.local": "the prod conf default, checked as a string by config tests",
    "mlflow.mlops.svc.cluster.local": "the prod conf default, checked as a string by config tests",
    "mlflow.example": "a fake tracking URI in config override tests (.example is reserved)",
    "vllm": "a fake endpoint name in config tests",
    "m": "tests/test_config.py: a one-letter placeholder base_url in a VLM settings test",
}
URL = re.compile(r"\b(?:https?|wss?|s3|grpc|ftp)://(\[[^\]]+\]|[A-Za-z0-9_.\-]+|\{[^}]*\})")


def _string_constants(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            parts = [v.value if isinstance(v, ast.Constant) else "{}" for v in node.values]
            found.append((node.lineno, "".join(map(str, parts))))
    return found


def _foreign_hosts(path: Path) -> list[str]:
    hosts = []
    for lineno, text in _string_constants(ast.parse(path.read_text(), str(path))):
        for match in URL.finditer(text):
            scheme = match.group(0).split("://")[0]
            host = match.group(1)
            if scheme == "s3" or host.startswith("{") or host in LOOPBACK:
                continue  # s3://bucket is a bucket name on the loopback moto server
            bare = host.strip("[]")
            if bare in LOOPBACK or host in ALLOWED_FAKE_HOSTS or host.endswith(".example"):
                continue
            shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
            hosts.append(f"{shown}:{lineno} {match.group(0)}")
    return hosts


def test_host_scan_catches_a_real_host(tmp_path: Path):
    probe = tmp_path / "_host_scan_probe.py"
    hub = "https://" + "huggingface.co"  # split so this file's own scan does not see it
    probe.write_text(f'URL = "{hub}/x"\nOK = f"http://127.0.0.1:{{port}}/v1"\n')
    assert _foreign_hosts(probe) == [f"_host_scan_probe.py:1 {hub}"]


def test_bench_and_tests_only_name_loopback_or_allowlisted_fake_hosts():
    files = sorted([*(REPO / "bench").glob("*.py"), *(REPO / "tests").glob("*.py")])
    assert len(files) > 20
    assert [host for path in files for host in _foreign_hosts(path)] == []


def test_suite_sets_hub_offline_flags():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert os.environ.get("TRANSFORMERS_OFFLINE") == "1"
