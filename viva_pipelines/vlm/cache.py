"""Byte stores for the VLM answer cache.

A VLM call costs seconds and money, and the dataset QC step re-runs whenever a shard is
re-materialised; answers are therefore cached by a hash of everything that determines them
(see :func:`viva_pipelines.vlm.base.cache_key`). The store only needs two operations, so it can
sit on a local folder, on the project's :class:`~viva_pipelines.storage.Storage` (local or S3),
or on anything else that offers them.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Protocol, runtime_checkable

_KEY = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


@runtime_checkable
class ByteStore(Protocol):
    """Where cached answers live: ``get`` returns ``None`` for a key never written."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...


@runtime_checkable
class StorageLike(Protocol):
    """The subset of :class:`viva_pipelines.storage.Storage` the cache needs."""

    def read_bytes(self, key: str) -> bytes: ...

    def write_bytes(self, key: str, data: bytes) -> object: ...


def _check_key(key: str) -> str:
    if not _KEY.fullmatch(key) or ".." in key.split("/"):
        raise ValueError(f"{key!r} is not a relative cache key")
    return key


class DirectoryStore:
    """Files under a local directory. Writes go to a temporary file in the same directory and are
    renamed into place, so concurrent workers and killed processes never leave half an answer."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    def get(self, key: str) -> bytes | None:
        try:
            return (self.root / _check_key(key)).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        final = self.root / _check_key(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, "xb") as handle:
                handle.write(data)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)


class StorageStore:
    """Adapts a :class:`~viva_pipelines.storage.Storage` (which already writes atomically, locally
    and on S3) to :class:`ByteStore`, keeping every entry under ``prefix``."""

    def __init__(self, storage: StorageLike, prefix: str = "vlm_cache") -> None:
        self.storage = storage
        self.prefix = _check_key(prefix.strip("/"))

    def __repr__(self) -> str:
        return f"StorageStore({self.storage!r}, prefix={self.prefix!r})"

    def get(self, key: str) -> bytes | None:
        try:
            return self.storage.read_bytes(f"{self.prefix}/{_check_key(key)}")
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        self.storage.write_bytes(f"{self.prefix}/{_check_key(key)}", data)


def as_byte_store(
    cache: ByteStore | StorageLike | str | os.PathLike[str] | None,
) -> ByteStore | None:
    """Accept what callers naturally have: a store, a ``Storage``, or a local directory path."""
    if cache is None or isinstance(cache, ByteStore):
        return cache
    # Before StorageLike: pathlib.Path has read_bytes/write_bytes too, with other meanings.
    if isinstance(cache, str | os.PathLike):
        return DirectoryStore(cache)
    if isinstance(cache, StorageLike):
        return StorageStore(cache)
    raise TypeError(
        f"cannot cache answers in {cache!r}: need get/put, read_bytes/write_bytes or a path"
    )
