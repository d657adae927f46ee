"""One storage root (a local folder or ``s3://bucket/prefix``) addressed by relative keys.

Every asset writes under ``{root}/{asset}/{partition}/…`` through this class, so that:

- writes are atomic: a local file is written under a temporary name and renamed; an object
  store PUT (single or multipart) only becomes visible once complete. A reader therefore never
  sees half a file, even when a writer dies part-way;
- keys cannot escape the root (``..``, absolute paths, symlinks pointing outside are refused);
- the same code runs on a laptop and against S3, with only the root URI changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from viva_pipelines.config.schema import is_remote


class PathEscapeError(ValueError):
    """A key that would resolve outside the storage root."""


class StorageUnreachable(OSError):
    """An object-store root that cannot be used: its endpoint does not answer, its bucket does
    not exist, or its credentials are missing or refused."""


def normalise_key(key: str | PurePosixPath) -> str:
    """Clean a relative key (``a/./b`` → ``a/b``) and refuse anything that leaves the root."""
    text = str(key)
    if (
        not text
        or text.startswith(("/", "\\"))
        or "\\" in text
        or "://" in text
        or ":" in text[:2]
        or "\x00" in text  # the OS would refuse it with a bare ValueError
    ):
        raise PathEscapeError(f"{text!r} is not a relative storage key")
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise PathEscapeError(f"{text!r} escapes its root")
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise PathEscapeError(f"{text!r} names the root itself, not a file under it")
    return "/".join(parts)


class Storage:
    """Key-addressed file operations under one root URI."""

    def __init__(
        self, root: str, *, endpoint_url: str | None = None, region_name: str | None = None
    ) -> None:
        self.root_uri = root.rstrip("/")
        self.is_remote = is_remote(root)
        options: dict[str, Any] = {}
        if endpoint_url:
            options["endpoint_url"] = endpoint_url
        if region_name:
            options["client_kwargs"] = {"region_name": region_name}
        self.root = UPath(self.root_uri, **options) if self.is_remote else UPath(self.root_uri)
        self.fs = self.root.fs

    def __repr__(self) -> str:
        return f"Storage({self.root_uri!r})"

    # -- addressing ------------------------------------------------------------------------
    def uri(self, key: str) -> str:
        """Full URI (or absolute local path) of ``key``."""
        clean = normalise_key(key)
        if not self.is_remote:
            path = Path(self.root_uri, clean)
            real_root = os.path.realpath(self.root_uri)
            real = os.path.realpath(path)
            if real != real_root and not real.startswith(real_root + os.sep):
                raise PathEscapeError(f"{key!r} resolves outside {self.root_uri} (via a symlink)")
            return str(path)
        return f"{self.root_uri}/{clean}"

    def key_of(self, uri: str) -> str:
        """The key of a URI (or absolute local path) under this root; other places raise."""
        if self.is_remote:
            prefix = self.root_uri + "/"
        else:
            prefix, uri = os.path.abspath(self.root_uri) + os.sep, os.path.abspath(uri)
        if not uri.startswith(prefix):
            raise PathEscapeError(f"{uri!r} is not under the storage root {self.root_uri}")
        return normalise_key(uri[len(prefix) :].replace(os.sep, "/"))

    def check_reachable(self) -> None:
        """Raise :class:`StorageUnreachable` naming the root and why when an object-store root
        cannot be listed (one request, a listing of the root's own prefix, which is what a
        prefix-scoped policy allows); a local root needs no check. Run before work whose first
        read or write would otherwise fail deep in a stack trace, after seconds of retries,
        or, for a missing bucket, not at all: reads there answer "no such file"."""
        if not self.is_remote:
            return
        bucket, _, prefix = self.fs._strip_protocol(self.root_uri).partition("/")
        try:
            self.fs.call_s3(
                "list_objects_v2", Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1
            )
        except Exception as exc:  # botocore's and s3fs's connection, bucket and access errors
            reason = str(exc).strip() or type(exc).__name__
            raise StorageUnreachable(f"storage {self.root_uri} cannot be used: {reason}") from None

    def _fs_path(self, key: str) -> str:
        return self.uri(key) if not self.is_remote else self.fs._strip_protocol(self.uri(key))

    # -- reading ---------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.fs.exists(self._fs_path(key))

    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self._fs_path(key))

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def read_parquet(self, key: str) -> pd.DataFrame:
        # Arrow-owned buffers, never a Python file object: Arrow's reader threads may drop the
        # last reference to a Python file during interpreter shutdown and abort the process.
        return pq.read_table(pa.BufferReader(self.read_bytes(key))).to_pandas()

    def size(self, key: str) -> int:
        return int(self.fs.size(self._fs_path(key)))

    def list(self, prefix: str = "", *, detail: bool = False) -> list[Any]:
        """Keys of all files under ``prefix`` (recursive, sorted). With ``detail``, dicts with
        ``key``, ``size`` and ``version`` (mtime locally, ETag on S3) — enough to notice change."""
        base = self._fs_path(prefix) if prefix else self.fs._strip_protocol(self.root_uri)
        if not self.fs.exists(base):
            return []
        base_strip = self.fs._strip_protocol(self.root_uri).rstrip("/") + "/"
        if not self.is_remote and os.path.isdir(base):
            found = _find_local(base)  # what fs.find gives, without its per-file overhead
        else:
            found = self.fs.find(base, detail=True)
        rows = []
        for path, info in sorted(found.items()):
            key = path[len(base_strip) :] if path.startswith(base_strip) else path
            if _is_temporary(key):
                continue
            version = info.get("ETag") or info.get("mtime") or info.get("LastModified")
            rows.append({"key": key, "size": int(info.get("size") or 0), "version": str(version)})
        return rows if detail else [row["key"] for row in rows]

    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A local file holding ``key``: the file itself on a local root, else a temp copy."""
        if not self.is_remote:
            path = Path(self.uri(key))
            if not path.is_file():
                raise FileNotFoundError(f"{self.uri(key)}: no such file in storage")
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="viva-get-") as tmp:
            local = Path(tmp, PurePosixPath(key).name)
            self.fs.get_file(self._fs_path(key), str(local))
            yield local

    def get_dir(self, prefix: str, local_dir: str | os.PathLike) -> Path:
        """Copy every file under ``prefix`` into ``local_dir``, keeping relative paths."""
        prefix = normalise_key(prefix)
        local_dir = Path(local_dir)
        keys = self.list(prefix)
        if not keys:
            raise FileNotFoundError(f"{self.uri(prefix)}: nothing stored under this prefix")
        for key in keys:
            target = local_dir / PurePosixPath(key).relative_to(prefix)
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.local_path(key) as source:
                shutil.copyfile(source, target)
        return local_dir

    def local_dir(self, location: str, scratch: str | os.PathLike) -> str:
        """A local directory for a directory named by a local path, a URI under this root or
        a key: the directory itself where it is local, else a copy under ``scratch``."""
        if Path(location).is_dir():
            return location
        key = self.key_of(location) if location.startswith(self.root_uri) else location
        if not self.is_remote and Path(self.uri(key)).is_dir():
            return self.uri(key)
        return str(self.get_dir(key, scratch))

    # -- writing (atomic) ------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` to ``key`` atomically; returns the URI."""
        if self.is_remote:
            self.fs.pipe_file(self._fs_path(key), data)
            return self.uri(key)
        with self._local_temp(key) as tmp:
            tmp.write_bytes(data)
        return self.uri(key)

    def write_json(self, key: str, obj: Any) -> str:
        return self.write_bytes(
            key, json.dumps(obj, indent=1, sort_keys=True, default=str).encode()
        )

    def write_parquet(self, key: str, frame: pd.DataFrame) -> str:
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
        return self.write_bytes(key, sink.getvalue().to_pybytes())

    def put_file(self, local: str | os.PathLike, key: str) -> str:
        """Copy a local file into storage atomically; returns the URI."""
        if self.is_remote:
            self.fs.put_file(os.fspath(local), self._fs_path(key))
            return self.uri(key)
        with self._local_temp(key) as tmp:
            shutil.copyfile(local, tmp)
        return self.uri(key)

    def put_dir(self, local_dir: str | os.PathLike, prefix: str) -> str:
        """Copy every file under ``local_dir`` to ``prefix``, keeping relative paths (each file
        atomically); returns the prefix's URI. The reverse of :meth:`get_dir`."""
        root = Path(local_dir)
        for path in sorted(root.rglob("*")):
            if path.is_file():
                self.put_file(path, f"{prefix}/{path.relative_to(root).as_posix()}")
        return self.uri(prefix)

    @contextmanager
    def staged(self, key: str) -> Iterator[Path]:
        """Yield a local scratch path to write ``key``'s content into; it is published
        atomically when the block exits normally and discarded when it raises."""
        suffix = "".join(PurePosixPath(key).suffixes[-1:])
        with tempfile.TemporaryDirectory(prefix="viva-put-") as tmp:
            path = Path(tmp, f"staged{suffix}")
            yield path
            self.put_file(path, key)

    def delete(self, key: str) -> None:
        """Remove a file or everything under a prefix; missing keys are not an error."""
        path = self._fs_path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    @contextmanager
    def _local_temp(self, key: str) -> Iterator[Path]:
        final = Path(self.uri(key))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
        try:
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)


TEMP_SUFFIX = ".tmp"


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a local file, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def is_storage_outage(exc: BaseException) -> bool:
    """True for the errors of a storage that cannot be reached (connection refused or
    closed, timeouts; botocore's and the builtin ones), as opposed to a bad file. Per-item
    error handlers re-raise these so the step fails and is retried, instead of recording a
    good input as broken."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # no S3 support installed: nothing of botocore's can be raised
        return False
    return isinstance(exc, (BotoConnectionError, HTTPClientError))


def file_location(uri: str, *, endpoint_url: str | None = None) -> tuple[Storage, str]:
    """A single file given by local path or URI as (storage of its folder, its key), so it
    is read like any stored file; ``endpoint_url`` applies to object-store URIs only."""
    root_uri, _, name = uri.rstrip("/").rpartition("/")
    return Storage(
        root_uri or ".", endpoint_url=endpoint_url if is_remote(root_uri) else None
    ), name


def _find_local(base: str) -> dict[str, dict[str, Any]]:
    """``LocalFileSystem.find(base, detail=True)`` for a local folder, ~3x faster on 100 000
    files: the same walk (real folders only; a symlink is an entry whose size is its
    target's), the same ``size`` and ``mtime`` (of the entry itself), unreadable folders
    skipped, vanished entries ignored; paths absolute and POSIX, as fsspec gives them."""
    found: dict[str, dict[str, Any]] = {}
    pending = [os.path.abspath(base).replace(os.sep, "/")]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                listed = list(entries)
        except OSError:
            continue
        for entry in listed:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(f"{folder.rstrip('/')}/{entry.name}")
                    continue
                stat = entry.stat(follow_symlinks=False)
                size = stat.st_size
                if entry.is_symlink():
                    try:
                        size = entry.stat(follow_symlinks=True).st_size
                    except OSError:
                        size = 0
            except FileNotFoundError:
                continue
            found[f"{folder.rstrip('/')}/{entry.name}"] = {"size": size, "mtime": stat.st_mtime}
    return found


def _is_temporary(key: str) -> bool:
    name = key.rstrip("/").rsplit("/", 1)[-1]  # PurePosixPath(key).name, without its cost
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)
