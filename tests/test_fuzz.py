"""Fuzzed inputs: every malformed file or mapping ends in the project's own clear error.

Targets: a ``conf/`` overlay file, the training run configs, benchmark suite manifests, the
QC external image manifest and the ``qc_dataset`` manifest read by training. A failure here is
an exception that escaped from deep inside a library (a raw KeyError, TypeError, yaml or
pyarrow error) instead of the error type that names the file, line or key to fix.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests import video_fixtures as vf
from tests.conftest import REPO
from viva_pipelines.config import ConfigError, load_settings
from viva_pipelines.evaluation.suite import CATEGORIES, SuiteError, load_suite
from viva_pipelines.qc.dataset import ACCEPTED, REJECTED
from viva_pipelines.qc.external import external_image_rows
from viva_pipelines.storage import Storage
from viva_pipelines.train.config import ConfigFileError, GrpoConfig, SftConfig

FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# -- value strategies ---------------------------------------------------------------------------
_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_key = st.one_of(
    st.sampled_from(
        [
            "storage",
            "root",
            "ingest",
            "width",
            "fps",
            "limits",
            "max_pixels",
            "sft",
            "optim",
            "lr",
            "data",
            "model",
            "qc",
            "vlm",
            "benchmark",
            "tracking",
            "sources",
            "raw_videos",
            "uri",
            "extensions",
            "runtime",
            "grpo",
            "execution",
            "schedules",
            "enabled",
        ]
    ),
    st.text(alphabet=string.ascii_lowercase + "_.", min_size=1, max_size=8),
)
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    _text,
    st.sampled_from(
        [
            "${oc.env:VIVA_FUZZ_UNSET}",
            "${nowhere.key}",
            "${",
            "~nobody_fuzz/x",
            "s3://",
            "",
            "../../etc",
            "/abs/path",
            "crop",
            "pad",
            "auto",
            "fsdp",
            "a\x00b",
        ]
    ),
    st.dates(min_value=datetime.date(1990, 1, 1), max_value=datetime.date(2100, 1, 1)),
    st.binary(max_size=6),
)
_tree = st.recursive(
    _scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_key, children, max_size=5)
    ),
    max_leaves=20,
)
_mapping = st.dictionaries(_key, _tree, max_size=6)


def _yaml_text(doc: Any) -> str:
    """YAML for ``doc``; dates and bytes become YAML timestamps and !!binary, as a user can
    type them."""
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


_YAML_SNIPPETS = [
    "a: [1, 2",
    "ingest: {width: 64",
    "\t- tab",
    "? [a, b]\n: value",  # an unhashable key
    "a: &x [*x]",
    "a: *undefined",
    "!!python/object:os.system ls",
    "storage: !!set {a, b}",
    "--- 1\n--- 2",
    "%YAML 9.9\n---\na: 1",
    "ingest:\n  width: !!float nan",
    "x: " + "[" * 2000 + "]" * 2000,
    "\ufeffingest: {fps: 0}",
    "ingest:\n  limits: null",
    "storage: null",
    "sft: 5",
    "- just\n- a list",
    "'just a string'",
    "42",
]

_yaml_documents = st.one_of(
    _mapping.map(_yaml_text),
    _tree.map(_yaml_text),  # any top level, not only mappings
    st.sampled_from(_YAML_SNIPPETS),
    st.text(max_size=80),
)


@pytest.fixture(scope="module")
def conf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-project")
    shutil.copytree(REPO / "conf" / "base", root / "conf" / "base")
    (root / "conf" / "local").mkdir()
    return root / "conf"


def _load_with(conf_dir: Path, text: str | bytes):
    """load_settings with ``text`` as conf/local/fuzz.yaml (an overlay on the real base)."""
    path = conf_dir / "local" / "fuzz.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        return load_settings(conf_dir, include_local=True)
    finally:
        path.unlink()


def _assert_config_error_names_file(exc: ConfigError) -> None:
    message = str(exc)
    assert "fuzz.yaml" in message or "conf/local" in message, message


@FUZZ
@given(text=_yaml_documents)
@example(text="ingest: {width: 64.5}")
@example(text="storage: {root: '~nobody_fuzz_user/data'}")
@example(text="ingest: {limits: null}")
@example(text="x: " + "[" * 5000 + "]" * 5000)
def test_conf_overlay_loads_or_raises_config_error_naming_the_file(conf_dir: Path, text: str):
    try:
        _load_with(conf_dir, text)
    except ConfigError as exc:
        _assert_config_error_names_file(exc)


@FUZZ
@given(data=st.binary(max_size=64))
@example(data=b"\xff\xfe\x00a: 1")
@example(data=b"a: \x80\x81")
def test_conf_overlay_with_raw_bytes_raises_config_error(conf_dir: Path, data: bytes):
    try:
        _load_with(conf_dir, data)
    except ConfigError as exc:
        _assert_config_error_names_file(exc)


def test_conf_errors_name_file_and_key(conf_dir: Path):
    with pytest.raises(ConfigError, match=r"conf/local/fuzz.yaml.*ingest\.width"):
        _load_with(conf_dir, "ingest: {width: [1, 2]}")
    with pytest.raises(ConfigError, match=r"conf/local/fuzz.yaml.*ingest\.nonsense.*unknown key"):
        _load_with(conf_dir, "ingest: {nonsense: 1}")
    with pytest.raises(ConfigError, match=r"conf/local/fuzz.yaml.*line 1.*not valid YAML"):
        _load_with(conf_dir, "ingest: {width: 64")
    with pytest.raises(ConfigError, match=r"conf/local/fuzz.yaml.*top level must be a mapping"):
        _load_with(conf_dir, "- a\n- b")
    with pytest.raises(ConfigError, match=r"conf/local/fuzz.yaml.*not UTF-8"):
        _load_with(conf_dir, b"ingest:\n  resize: \xff\xfe")
    # Path.expanduser raises RuntimeError inside the schema's validator: the loader names the
    # layers (the schema would have to turn it into a ValueError to name storage.root too).
    with pytest.raises(ConfigError, match=r"conf/local/.*home directory"):
        _load_with(conf_dir, "storage: {root: '~nobody_fuzz_user/data'}")
    with pytest.raises(ConfigError, match=r"conf/local/fuzz.yaml.*nested too deeply"):
        _load_with(conf_dir, "x: " + "[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError, match=r"conf/local/fuzz.yaml.*ingest\.fps"):
        _load_with(conf_dir, "ingest: {fps: 2021-01-01}")


# -- training run configs -----------------------------------------------------------------------
def _valid_sft() -> dict[str, Any]:
    return {
        "output_prefix": "runs/sft",
        "data": {"storage_root": "/tmp/root"},
        "model": {},
    }


def _valid_grpo() -> dict[str, Any]:
    return {
        "output_prefix": "runs/grpo",
        "data": {"storage_root": "/tmp/root"},
        "sft_model": "runs/sft/model",
        "sft_cache": "sft_cache/x",
    }


def _mutate(base: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(base))
    node = doc
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value
    return doc


_run_keys = st.sampled_from(
    ["data", "model", "optim", "loss", "eval", "runtime", "tracking", "lora", "sampling",
     "output_prefix", "sft_model", "lr", "batch_size", "frames", "height", "video_fraction",
     "use_images", "betas", "sigmas", "seed", "parallel", "rank", "targets", "group_size",
     "codec", "storage_root", "unknown_key"]
)  # fmt: skip
_run_docs = st.one_of(
    _tree,
    st.builds(
        _mutate,
        st.sampled_from([_valid_sft(), _valid_grpo()]),
        st.lists(_run_keys, min_size=1, max_size=3),
        _tree,
    ),
)


@FUZZ
@given(doc=_run_docs, kind=st.sampled_from([SftConfig, GrpoConfig]))
@example(doc=None, kind=SftConfig)
@example(doc=[1, 2], kind=GrpoConfig)
@example(doc={"optim": {"betas": "ab"}, **_valid_sft()}, kind=SftConfig)
def test_run_config_from_mapping_raises_config_file_error(doc: Any, kind: type):
    try:
        config = kind.from_mapping(doc, origin="fuzz.yaml")
    except ConfigFileError as exc:
        assert str(exc).startswith("fuzz.yaml: "), exc
    else:
        # What validates must survive the round trip the launcher does (YAML out, YAML in).
        assert isinstance(config.flat_params(), dict)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "run.yaml")
            config.to_yaml(path)
            assert kind.from_yaml(path) == config


@FUZZ
@given(text=_yaml_documents, kind=st.sampled_from([SftConfig, GrpoConfig]))
@example(text="- a\n- b", kind=SftConfig)
@example(text="", kind=SftConfig)
def test_run_config_from_yaml_raises_config_file_error(text: str, kind: type):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "run.yaml")
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            kind.from_yaml(path)
        except ConfigFileError as exc:
            assert str(path) in str(exc), exc


def test_run_config_errors_name_the_key(tmp_path: Path):
    with pytest.raises(ConfigFileError, match=r"x\.yaml: optim\.lr"):
        SftConfig.from_mapping({**_valid_sft(), "optim": {"lr": "fast"}}, origin="x.yaml")
    with pytest.raises(ConfigFileError, match=r"\(top level\)"):
        GrpoConfig.from_mapping(["a"], origin="x.yaml")
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigFileError, match=r"bad\.yaml"):
        SftConfig.from_yaml(path)
    with pytest.raises(ConfigFileError, match=r"missing\.yaml"):
        SftConfig.from_yaml(tmp_path / "missing.yaml")
    path.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigFileError, match=r"bad\.yaml: .*key 'lr' given twice"):
        SftConfig.from_yaml(path)


# -- benchmark suite manifests ------------------------------------------------------------------
_SUITE_FIELDS = [
    "id", "category", "source_video", "instruction", "source_caption", "target_caption",
    "reference_image", "target_video", "edit_mask",
]  # fmt: skip
_path_text = st.one_of(
    st.sampled_from(
        [
            "videos/a.mp4",
            "../x.mp4",
            "/etc/passwd",
            "videos/../../x",
            "C:/x",
            "\\\\host\\x",
            "s3://bucket/x",
            "./videos/a.mp4",
            ".",
            "",
            "videos//a.mp4",
            "a\x00b",
            "~/x",
        ]
    ),
    st.text(alphabet="ab./\\:~\x00", max_size=10),
)
_suite_value = st.one_of(_path_text, st.sampled_from(CATEGORIES), _scalar, _tree)
_suite_row = st.one_of(
    st.dictionaries(st.sampled_from([*_SUITE_FIELDS, "extra"]), _suite_value, max_size=10),
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(["a", "b", "c"]),
            "category": st.one_of(st.sampled_from(CATEGORIES), _text),
            "source_video": _path_text,
            "instruction": _text,
            "source_caption": _text,
            "target_caption": _text,
        },
        optional={"reference_image": _path_text, "edit_mask": _path_text},
    ),
    _tree,
)


def _json_line(row: Any) -> str:
    return json.dumps(row, default=str)


_suite_lines = st.lists(
    st.one_of(
        _suite_row.map(_json_line),
        st.text(max_size=40),
        st.sampled_from(["", "   ", "{", "[]", "null", "NaN", "1e999", "[" * 3000]),
    ),
    max_size=6,
)


@pytest.fixture(scope="module")
def suite_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("suite-root")
    (root / "videos").mkdir()
    (root / "videos" / "a.mp4").write_bytes(b"not decoded here")
    return root


def _load_suite_bytes(root: Path, data: bytes, *, check_files: bool) -> list:
    storage = Storage(str(root))
    storage.write_bytes("suite.jsonl", data)
    return load_suite(storage, "suite.jsonl", check_files=check_files)


@FUZZ
@given(lines=_suite_lines, check_files=st.booleans())
@example(lines=['{"id": "a"}'], check_files=True)
@example(lines=["[" * 3000], check_files=False)
def test_suite_manifest_loads_or_raises_suite_error_naming_the_line(
    suite_root: Path, lines: list[str], check_files: bool
):
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    try:
        instances = _load_suite_bytes(suite_root, data, check_files=check_files)
    except SuiteError as exc:
        assert str(exc).startswith("suite.jsonl"), exc
    else:
        assert instances and len({i.id for i in instances}) == len(instances)
        for instance in instances:
            assert instance.category in CATEGORIES
            for key in instance.paths():
                assert not key.startswith(("/", "..")) and "/../" not in f"/{key}/"


@FUZZ
@given(data=st.binary(max_size=80))
@example(data=b'{"id": "\xff"}')
def test_suite_manifest_with_random_bytes_raises_suite_error(suite_root: Path, data: bytes):
    try:
        _load_suite_bytes(suite_root, data, check_files=True)
    except SuiteError as exc:
        assert str(exc).startswith("suite.jsonl"), exc


# -- QC external image manifest -----------------------------------------------------------------
def _png(size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def external_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("external")
    (folder / "a").mkdir()
    for name in ("src.png", "tgt.png", "mask.png"):
        (folder / "a" / name).write_bytes(_png())
    (folder / "a" / "text.png").write_text("not a picture")
    (folder / "a" / "bomb.png").write_bytes(vf.png_bomb())
    (folder / "a" / "big.png").write_bytes(_png(16))
    (tmp_path_factory.getbasetemp() / "outside.png").write_bytes(_png())
    return folder, tmp_path_factory.mktemp("external-root")


_external_row = st.one_of(
    st.fixed_dictionaries(
        {
            "id": st.one_of(st.sampled_from(["p1", "p2"]), _scalar),
            "source": st.one_of(st.sampled_from(["a/src.png", "../outside.png"]), _path_text),
            "target": st.one_of(st.just("a/tgt.png"), _suite_value),
            "instruction": st.one_of(_text, _scalar, _tree),
        },
        optional={
            "mask": st.one_of(st.just("a/mask.png"), _suite_value),
            "edit_type": _suite_value,
            "source_caption": _suite_value,
            "target_caption": _suite_value,
        },
    ),
    st.dictionaries(_key, _tree, max_size=4),
    _tree,
)
_external_lines = st.lists(
    st.one_of(_external_row.map(_json_line), st.text(max_size=30), st.just("[" * 3000)),
    max_size=5,
)


def _external(folder: Path, root: Path, data: bytes) -> list[dict[str, Any]]:
    (folder / "pairs.jsonl").write_bytes(data)
    return external_image_rows(
        Storage(str(root)), str(folder / "pairs.jsonl"), val_fraction=0.2, split_seed=0
    )


@FUZZ
@given(lines=_external_lines)
@example(
    lines=['{"id": "p1", "source": "../outside.png", "target": "a/tgt.png", "instruction": "x"}']
)
@example(lines=['{"id": "p1", "source": "a/src.png", "target": 5, "instruction": ["x"]}'])
def test_external_manifest_gives_one_row_per_line_accepted_or_rejected_with_reason(
    external_dirs: tuple[Path, Path], lines: list[str]
):
    folder, root = external_dirs
    text = "\n".join(lines)
    rows = _external(folder, root, text.encode("utf-8", "surrogatepass"))
    assert len(rows) == sum(1 for line in text.splitlines() if line.strip())
    ids = [row["sample_id"] for row in rows if row["status"] == ACCEPTED]
    assert len(ids) == len(set(ids))
    for row in rows:
        assert row["status"] in (ACCEPTED, REJECTED)
        if row["status"] == REJECTED:
            assert isinstance(row["reason"], str) and row["reason"].startswith("line "), row
        else:
            for field in ("instruction", "edit_type"):
                assert isinstance(row[field], str) and row[field], row
            for field in ("source_caption", "target_caption"):
                assert row[field] is None or isinstance(row[field], str), row
            assert Storage(str(root)).exists(row["source_key"])


def test_external_manifest_rejects_bad_lines_with_reasons(external_dirs: tuple[Path, Path]):
    folder, root = external_dirs
    good = {"id": "p1", "source": "a/src.png", "target": "a/tgt.png", "instruction": "x"}
    lines = [
        json.dumps(good),
        json.dumps({**good, "source": "../outside.png", "id": "p2"}),
        json.dumps({**good, "source": "/etc/passwd", "id": "p3"}),
        json.dumps({**good, "instruction": ["not", "text"], "id": "p4"}),
        json.dumps({**good, "target": 5, "id": "p5"}),
        json.dumps(good),  # the same id again
        "{not json",
        json.dumps({**good, "source": "a\x00b", "id": "p6"}),
        # Accepted before and read first by SFT, whose cache build they stopped:
        json.dumps({**good, "target": "a/text.png", "id": "p7"}),
        json.dumps({**good, "reference": "a/bomb.png", "id": "p8"}),
        json.dumps({**good, "mask": "a/big.png", "id": "p9"}),
        json.dumps({**good, "reference": "a/big.png", "id": "p10"}),  # any size
    ]
    # A byte-order mark first (Windows editors) does not make line 1 invalid JSON.
    rows = _external(folder, root, "\ufeff".join(["", "\n".join(lines)]).encode())
    reasons = [row.get("reason") for row in rows]
    assert reasons[0] is None
    assert "leaves the manifest's folder" in reasons[1]
    assert "leaves the manifest's folder" in reasons[2]
    assert "instruction must be a string" in reasons[3]
    assert "target must be a string" in reasons[4]
    assert "duplicate id 'p1' (first on line 1)" in reasons[5]
    assert "not valid JSON" in reasons[6]
    assert "source path" in reasons[7]
    assert "target file 'a/text.png' is not a readable image (UnidentifiedImageError" in reasons[8]
    assert "reference file 'a/bomb.png' is not a readable image (DecompressionBomb" in reasons[9]
    assert "mask is 16x16, the source 8x8: a pair's pictures must be the same size" in reasons[10]
    assert reasons[11] is None


def test_external_manifest_that_is_missing_or_not_utf8_is_a_clear_error(
    external_dirs: tuple[Path, Path],
):
    folder, root = external_dirs
    with pytest.raises(ValueError, match=r"pairs.jsonl.*not UTF-8"):
        _external(folder, root, b'{"id": "\xff"}')
    with pytest.raises(ValueError, match=r"nowhere.jsonl.*not found"):
        external_image_rows(
            Storage(str(root)), str(folder / "nowhere.jsonl"), val_fraction=0.2, split_seed=0
        )


# -- the qc_dataset manifest read by training ---------------------------------------------------
from viva_pipelines.train.sft import training_rows  # noqa: E402  (heavy: torch, diffusers)
from viva_pipelines.train.sft_data import NULLABLE_TEXT  # noqa: E402

_GOOD_MANIFEST = pd.DataFrame(
    {
        "sample_id": ["s1", "s2"],
        "status": [ACCEPTED, ACCEPTED],
        "modality": ["video", "image"],
        "split": ["train", "val"],
        "instruction": ["remove it", "recolour it"],
        "edit_type": ["remove", None],
        "source_key": ["a.mp4", "a.png"],
        "target_key": ["b.mp4", "b.png"],
        "mask_key": ["m.npz", "m.png"],
        "reference_key": [None, None],
    }
)


def _sft_config(root: Path) -> SftConfig:
    return SftConfig.from_mapping(
        {"output_prefix": "runs/sft", "data": {"storage_root": str(root)}, "model": {}}
    )


def _write_table(root: Path, table: pa.Table | bytes) -> None:
    path = root / "qc_dataset" / "manifest.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(table, bytes):
        path.write_bytes(table)
    else:
        # Without the pandas metadata, as another tool would write it (the metadata would
        # otherwise cast a retyped column back to the original dtype on read).
        pq.write_table(table.replace_schema_metadata(None), path)


def test_training_rows_accepts_the_good_manifest(tmp_path: Path):
    _write_table(tmp_path, pa.Table.from_pandas(_GOOD_MANIFEST, preserve_index=False))
    rows = training_rows(Storage(str(tmp_path)), _sft_config(tmp_path))
    assert list(rows["sample_id"]) == ["s1", "s2"]


_columns = st.sampled_from(list(_GOOD_MANIFEST.columns))
_arrow_values = st.sampled_from(
    [
        pa.array([1, 2]),
        pa.array([1.5, math.nan]),
        pa.array([True, False]),
        pa.array([None, None], pa.null()),
        pa.array([[1], [2]]),
        pa.array([b"x", b"y"]),
        pa.array(["accepted", None]),
        pa.array([{"a": 1}, {"a": 2}]),
    ]
)


@FUZZ
@given(
    drop=st.lists(_columns, unique=True, max_size=3),
    retype=st.dictionaries(_columns, _arrow_values, max_size=3),
    garbage=st.one_of(st.none(), st.binary(max_size=40)),
)
@example(drop=["status"], retype={}, garbage=None)
@example(drop=[], retype={"sample_id": pa.array([1, 2])}, garbage=None)
@example(drop=[], retype={}, garbage=b"PAR1 not parquet PAR1")
def test_training_rows_rejects_a_bad_manifest_with_a_clear_value_error(
    tmp_path: Path, drop: list[str], retype: dict[str, pa.Array], garbage: bytes | None
):
    frame = _GOOD_MANIFEST.drop(columns=drop)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for name, values in retype.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
    _write_table(tmp_path, garbage if garbage is not None else table)
    try:
        rows = training_rows(Storage(str(tmp_path)), _sft_config(tmp_path))
    except ValueError as exc:
        assert "qc_dataset/manifest.parquet" in str(exc), exc
    else:
        # Only harmless changes may pass: nulls where a value is optional, a status that drops
        # a row from training, or other text that every accepted row can still train on.
        assert not drop and garbage is None
        statuses = table.column("status").to_pylist()
        accepted = [i for i, status in enumerate(statuses) if status == ACCEPTED]
        allowed = {"modality": {"video", "image"}, "split": {"train", "val"}}
        for name, values in retype.items():
            assert values.type in (pa.null(), pa.string()), (name, values)
            if name in NULLABLE_TEXT or name == "status":
                continue
            seen = [table.column(name).to_pylist()[i] for i in accepted]
            assert all(isinstance(v, str) and v for v in seen), (name, seen)
            assert set(seen) <= allowed.get(name, set(seen)), (name, seen)
            assert name != "sample_id" or len(set(seen)) == len(seen), seen
        assert len(rows) == len(accepted)


def test_training_rows_names_missing_columns_and_bad_dtypes(tmp_path: Path):
    storage, config = Storage(str(tmp_path)), _sft_config(tmp_path)
    with pytest.raises(ValueError, match=r"manifest.parquet: not found"):
        training_rows(storage, config)
    _write_table(tmp_path, b"garbage")
    with pytest.raises(ValueError, match=r"manifest.parquet: not a readable Parquet file"):
        training_rows(storage, config)
    frame = _GOOD_MANIFEST.drop(columns=["status", "edit_type"])
    _write_table(tmp_path, pa.Table.from_pandas(frame, preserve_index=False))
    with pytest.raises(ValueError, match=r"missing column\(s\) 'status', 'edit_type'"):
        training_rows(storage, config)
    table = pa.Table.from_pandas(_GOOD_MANIFEST, preserve_index=False)
    table = table.set_column(
        table.column_names.index("instruction"), "instruction", pa.array([1, 2])
    )
    _write_table(tmp_path, table)
    with pytest.raises(ValueError, match=r"column 'instruction' must hold strings"):
        training_rows(storage, config)
