"""Benchmark suite manifests: valid suites load exactly, broken ones fail naming the line.

Media files are a few arbitrary bytes: loading never decodes them, it only checks that they
exist and hashes them for the fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from viva_pipelines.evaluation.suite import (
    CATEGORIES,
    OPTIONAL,
    REQUIRED,
    BenchInstance,
    SuiteError,
    load_suite,
    suite_fingerprint,
    suite_frame,
)
from viva_pipelines.storage import Storage

MANIFEST = "suite.jsonl"


def _row(ident: str = "swap-001", **overrides: Any) -> dict[str, Any]:
    """A valid minimal row; keyword overrides replace or add fields (unvalidated on purpose)."""
    row: dict[str, Any] = {
        "id": ident,
        "category": "swap",
        "source_video": "videos/a.mp4",
        "instruction": "Replace the dog with a cat",
        "source_caption": "A dog runs on grass",
        "target_caption": "A cat runs on grass",
    }
    row.update(overrides)
    return row


def _write_suite(root: Path, lines: list[str]) -> Storage:
    """A storage root with the manifest ``lines`` and a few tiny media files."""
    storage = Storage(str(root))
    storage.write_bytes("videos/a.mp4", b"video-a")
    storage.write_bytes("videos/b.mp4", b"video-b")
    storage.write_bytes("refs/cat.png", b"png-cat")
    storage.write_bytes("masks/b.png", b"mask-b")
    storage.write_bytes(MANIFEST, ("\n".join(lines) + "\n").encode())
    return storage


def _valid_lines() -> list[str]:
    return [
        json.dumps(_row()),
        "",  # blank lines are skipped but still counted
        json.dumps(
            _row(
                "ref-001",
                category="ref_swap",
                source_video="./videos/b.mp4",
                reference_image="refs/cat.png",
                edit_mask="masks/b.png",
                target_video=None,
            )
        ),
    ]


def test_valid_manifest_loads_with_fields_and_defaults(tmp_path: Path) -> None:
    storage = _write_suite(tmp_path, _valid_lines())
    first, second = load_suite(storage, MANIFEST)
    assert first == BenchInstance(
        id="swap-001",
        category="swap",
        source_video="videos/a.mp4",
        instruction="Replace the dog with a cat",
        source_caption="A dog runs on grass",
        target_caption="A cat runs on grass",
    )
    assert (first.reference_image, first.target_video, first.edit_mask) == (None, None, None)
    # Paths come back normalised so they can be used as storage keys directly.
    assert second.source_video == "videos/b.mp4"
    assert second.reference_image == "refs/cat.png"
    assert second.edit_mask == "masks/b.png"
    assert second.target_video is None
    assert set(CATEGORIES) >= {first.category, second.category}


# (line 2 content, expected fragments of the message); the first line is always valid.
BROKEN: dict[str, tuple[str, tuple[str, ...]]] = {
    "invalid_json": ('{"id": "x",', ("line 2", "invalid JSON")),
    "not_object": ("[1, 2]", ("line 2", "JSON object", "list")),
    "missing_field": (
        json.dumps({k: v for k, v in _row("x").items() if k != "instruction"}),
        ("line 2", "missing", "'instruction'"),
    ),
    "unknown_field": (json.dumps(_row("x", score=3)), ("line 2", "unknown field", "'score'")),
    "empty_value": (json.dumps(_row("x", instruction="  ")), ("line 2", "'instruction'", "empty")),
    "non_string": (json.dumps(_row("x", source_caption=5)), ("line 2", "'source_caption'", "5")),
    "null_required": (json.dumps(_row("x", target_caption=None)), ("line 2", "'target_caption'")),
    "empty_optional": (json.dumps(_row("x", edit_mask="")), ("line 2", "'edit_mask'", "empty")),
    "unknown_category": (
        json.dumps(_row("x", category="colour")),
        ("line 2", "unknown category 'colour'", "known: swap"),
    ),
    "ref_without_image": (
        json.dumps(_row("x", category="ref_add")),
        ("line 2", "'ref_add'", "reference_image"),
    ),
    "duplicate_id": (json.dumps(_row("swap-001")), ("line 2", "duplicate id 'swap-001'", "line 1")),
    "dotdot_escape": (
        json.dumps(_row("x", source_video="../outside.mp4")),
        ("line 2", "'source_video'", "../outside.mp4"),
    ),
    "absolute_path": (
        json.dumps(_row("x", reference_image="/etc/passwd")),
        ("line 2", "'reference_image'", "/etc/passwd"),
    ),
    "uri_path": (
        json.dumps(_row("x", target_video="s3://other/v.mp4")),
        ("line 2", "'target_video'", "s3://other/v.mp4"),
    ),
    "missing_file": (
        json.dumps(_row("x", source_video="videos/nope.mp4")),
        ("line 2", "videos/nope.mp4", "does not exist"),
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_line_raises_naming_the_line(tmp_path: Path, case: str) -> None:
    line, fragments = BROKEN[case]
    storage = _write_suite(tmp_path, [json.dumps(_row()), line])
    with pytest.raises(SuiteError) as caught:
        load_suite(storage, MANIFEST)
    message = str(caught.value)
    assert message.startswith(f"{MANIFEST} line 2: ")
    for fragment in fragments:
        assert fragment in message


def test_a_manifest_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    """Windows editors may start a UTF-8 file with a BOM; line 1 is still JSON (it was
    refused as "Unexpected UTF-8 BOM")."""
    storage = _write_suite(tmp_path, _valid_lines())
    storage.write_bytes(MANIFEST, b"\xef\xbb\xbf" + storage.read_bytes(MANIFEST))
    assert [instance.id for instance in load_suite(storage, MANIFEST)] == ["swap-001", "ref-001"]


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_empty_manifest_raises(tmp_path: Path, content: bytes) -> None:
    storage = Storage(str(tmp_path))
    storage.write_bytes(MANIFEST, content)
    with pytest.raises(SuiteError, match=r"suite\.jsonl: empty manifest"):
        load_suite(storage, MANIFEST)


def test_missing_manifest_raises(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="manifest not found"):
        load_suite(Storage(str(tmp_path)), MANIFEST)


def test_symlink_escaping_the_root_is_refused(tmp_path: Path) -> None:
    """A key that looks relative but resolves outside via a symlink must not be read."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "v.mp4").write_bytes(b"secret")
    storage = _write_suite(tmp_path / "root", [json.dumps(_row(source_video="link/v.mp4"))])
    (tmp_path / "root" / "link").symlink_to(outside)
    with pytest.raises(SuiteError, match=r"line 1: .*outside"):
        load_suite(storage, MANIFEST)


def test_check_files_false_skips_the_existence_check(tmp_path: Path) -> None:
    """Lets a manifest be validated before its media are uploaded."""
    line = json.dumps(_row(source_video="videos/later.mp4"))
    storage = _write_suite(tmp_path, [line])
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite(storage, MANIFEST)
    (instance,) = load_suite(storage, MANIFEST, check_files=False)
    assert instance.source_video == "videos/later.mp4"
    # Escapes are still refused without the file check: they are never valid.
    storage.write_bytes(MANIFEST, json.dumps(_row(source_video="../x.mp4")).encode())
    with pytest.raises(SuiteError, match="line 1"):
        load_suite(storage, MANIFEST, check_files=False)


def test_fingerprint_tracks_rows_and_file_bytes(tmp_path: Path) -> None:
    storage = _write_suite(tmp_path, _valid_lines())
    base = suite_fingerprint(storage, load_suite(storage, MANIFEST))
    assert len(base) == 16 and int(base, 16) >= 0
    # Stable: same data, same fingerprint; reordering lines is not a data change.
    assert suite_fingerprint(storage, load_suite(storage, MANIFEST)) == base
    storage.write_bytes(MANIFEST, "\n".join(reversed(_valid_lines())).encode())
    assert suite_fingerprint(storage, load_suite(storage, MANIFEST)) == base

    # A referenced file's bytes change (the reference image of the second instance).
    storage.write_bytes("refs/cat.png", b"png-cat-v2")
    changed_file = suite_fingerprint(storage, load_suite(storage, MANIFEST))
    assert changed_file != base
    storage.write_bytes("refs/cat.png", b"png-cat")
    assert suite_fingerprint(storage, load_suite(storage, MANIFEST)) == base

    # An unreferenced file does not matter.
    storage.write_bytes("videos/unused.mp4", b"whatever")
    assert suite_fingerprint(storage, load_suite(storage, MANIFEST)) == base

    # A line changes (one word of an instruction).
    lines = _valid_lines()
    lines[0] = json.dumps(_row(instruction="Replace the dog with a fox"))
    storage.write_bytes(MANIFEST, "\n".join(lines).encode())
    changed_line = suite_fingerprint(storage, load_suite(storage, MANIFEST))
    assert changed_line not in (base, changed_file)


def test_suite_frame_has_one_row_per_instance_and_all_columns(tmp_path: Path) -> None:
    storage = _write_suite(tmp_path, _valid_lines())
    frame = suite_frame(load_suite(storage, MANIFEST))
    assert list(frame.columns) == [*REQUIRED, *OPTIONAL]
    assert frame["id"].tolist() == ["swap-001", "ref-001"]
    assert frame.loc[0, "reference_image"] is None
    assert frame.loc[1, "reference_image"] == "refs/cat.png"
    assert list(suite_frame([]).columns) == [*REQUIRED, *OPTIONAL]
    # Round trip through Parquet, the way the asset stores it.
    storage.write_parquet("suite.parquet", frame)
    back = storage.read_parquet("suite.parquet")
    assert back["id"].tolist() == frame["id"].tolist()
    assert back["reference_image"].isna().tolist() == [True, False]
