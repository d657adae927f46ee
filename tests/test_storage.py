from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from viva_pipelines.storage import PathEscapeError, Storage, normalise_key


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path: Path) -> Storage:
    if request.param == "local":
        return Storage(str(tmp_path / "root"))
    bucket = request.getfixturevalue("s3_bucket")
    return Storage(f"s3://{bucket}/prefix", endpoint_url=request.getfixturevalue("s3_endpoint"))


def test_bytes_json_parquet_round_trip(storage: Storage):
    storage.write_bytes("a/b.bin", b"\x00\x01")
    storage.write_json("a/c.json", {"x": [1, 2]})
    frame = pd.DataFrame({"video_id": ["a", "b"], "frames": [17, 9]})
    storage.write_parquet("m/manifest.parquet", frame)
    assert storage.read_bytes("a/b.bin") == b"\x00\x01"
    assert storage.read_json("a/c.json") == {"x": [1, 2]}
    pd.testing.assert_frame_equal(storage.read_parquet("m/manifest.parquet"), frame)
    assert storage.list() == ["a/b.bin", "a/c.json", "m/manifest.parquet"]
    assert storage.list("a") == ["a/b.bin", "a/c.json"]
    assert storage.list("nothing/here") == []
    sizes = {row["key"]: row["size"] for row in storage.list(detail=True)}
    assert sizes["a/b.bin"] == 2


def test_overwrite_replaces_content(storage: Storage):
    storage.write_bytes("k.txt", b"old content")
    storage.write_bytes("k.txt", b"new")
    assert storage.read_bytes("k.txt") == b"new"


def test_staged_publishes_on_success_only(storage: Storage):
    with storage.staged("v/clip.mp4") as path:
        path.write_bytes(b"video bytes")
    assert storage.read_bytes("v/clip.mp4") == b"video bytes"
    with pytest.raises(RuntimeError), storage.staged("v/clip.mp4") as path:
        path.write_bytes(b"half a vid")
        raise RuntimeError("encoder died")
    assert storage.read_bytes("v/clip.mp4") == b"video bytes"
    with pytest.raises(RuntimeError), storage.staged("v/other.mp4") as path:
        path.write_bytes(b"partial")
        raise RuntimeError("encoder died")
    assert not storage.exists("v/other.mp4")
    assert storage.list("v") == ["v/clip.mp4"]


def test_local_path_and_put_file(storage: Storage, tmp_path: Path):
    src = tmp_path / "payload.bin"
    src.write_bytes(b"x" * 1000)
    uri = storage.put_file(src, "in/payload.bin")
    assert uri == storage.uri("in/payload.bin")
    with storage.local_path("in/payload.bin") as local:
        assert local.read_bytes() == b"x" * 1000
    with pytest.raises(FileNotFoundError), storage.local_path("in/missing.bin"):
        pass


def test_delete_file_and_prefix(storage: Storage):
    for key in ("d/1", "d/2", "d/sub/3", "keep"):
        storage.write_bytes(key, b"1")
    storage.delete("d/1")
    assert storage.list() == ["d/2", "d/sub/3", "keep"]
    storage.delete("d")
    storage.delete("never/existed")
    assert storage.list() == ["keep"]


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "/etc/passwd", "", ".", "s3://other/k", "\\x"]
)
def test_keys_cannot_escape_the_root(storage: Storage, key: str):
    with pytest.raises(PathEscapeError):
        storage.write_bytes(key, b"no")
    with pytest.raises(PathEscapeError):
        storage.read_bytes(key)


def test_key_normalisation():
    assert normalise_key("a/./b//c") == "a/b/c"
    assert normalise_key("a/x/../b") == "a/b"


def test_symlink_out_of_a_local_root_is_refused(tmp_path: Path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("s")
    os.symlink(outside, root / "link")
    storage = Storage(str(root))
    with pytest.raises(PathEscapeError, match="symlink"):
        storage.read_bytes("link/secret")


def test_interrupted_local_write_leaves_no_partial_file(tmp_path: Path, monkeypatch):
    storage = Storage(str(tmp_path / "root"))
    storage.write_bytes("m.parquet", b"complete")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes("m.parquet", b"half")
    assert storage.read_bytes("m.parquet") == b"complete"
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["m.parquet"]


def test_local_listing_fast_path_matches_fsspec_find(tmp_path: Path):
    """The local listing walks the folder itself; it must list what fsspec's find lists."""
    from viva_pipelines.storage import TEMP_SUFFIX, _find_local

    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "deep.mp4").write_bytes(b"12345")
    (root / "top.mp4").write_bytes(b"")
    (root / "a" / f".x.mp4{TEMP_SUFFIX}").write_bytes(b"1")  # a write in progress
    (root / "a" / "clip 1.MOV").write_bytes(b"123")
    (root / "empty").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.mp4").write_bytes(b"abcdef")
    os.symlink(outside / "o.mp4", root / "link.mp4")
    os.symlink(outside, root / "linked_dir")
    os.symlink(tmp_path / "missing", root / "broken.mp4")
    storage = Storage(str(root))
    expected = {
        path: {"size": info["size"], "mtime": info["mtime"]}
        for path, info in storage.fs.find(str(root), detail=True).items()
    }
    assert _find_local(str(root)) == expected
    rows = storage.list(detail=True)
    assert [row["key"] for row in rows] == [
        "a/b/deep.mp4",
        "a/clip 1.MOV",
        "broken.mp4",
        "link.mp4",
        "linked_dir",
        "top.mp4",
    ]
    assert {row["key"]: row["size"] for row in rows}["link.mp4"] == 6
    assert storage.list("a") == ["a/b/deep.mp4", "a/clip 1.MOV"]


def test_storage_outages_are_told_apart_from_bad_files():
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    from viva_pipelines.storage import is_storage_outage
    from viva_pipelines.video.probe import VideoRejected

    for outage in (
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:9"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:9"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError("timed out"),
    ):
        assert is_storage_outage(outage), outage
    for bad_file in (ValueError("bad"), VideoRejected("not a video"), KeyError("x"), OSError(5)):
        assert not is_storage_outage(bad_file), bad_file


def test_an_object_store_that_cannot_be_used_is_named_with_why(s3_endpoint, s3_bucket, tmp_path):
    """A missing bucket read as "no such file" everywhere (a typo in storage.root ingested
    nothing, quietly); a dead endpoint failed the first read after seconds of retries, in a
    stack trace. check_reachable says which, naming the root."""
    import socket

    from viva_pipelines.storage import StorageUnreachable

    Storage(f"s3://{s3_bucket}/new/prefix", endpoint_url=s3_endpoint).check_reachable()
    Storage(str(tmp_path / "not-yet")).check_reachable()  # local: created when written
    missing = Storage("s3://no-such-bucket-here/demo", endpoint_url=s3_endpoint)
    assert not missing.exists("registry.parquet")  # what the first read sees
    with pytest.raises(
        StorageUnreachable,
        match=r"^storage s3://no-such-bucket-here/demo cannot be used: .*bucket does not exist",
    ):
        missing.check_reachable()
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = Storage(f"s3://{s3_bucket}/demo", endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(StorageUnreachable, match="Could not connect to the endpoint URL"):
        dead.check_reachable()
