"""Independent CPU-bound work spread over the machine's cores, results in order.

Rendering the demo world (its videos, the benchmark suite, the instructor's corpus and the
image-editing pairs) is plain Python and OpenCV, one core at a time, and each scene depends on
its own seed only, so the scenes are rendered by one process per core and come back in the
order a single process would have produced them: the same bytes, in a fraction of the time.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


#: Seconds of work below which a pool costs more than it saves: starting a worker process and
#: importing what it renders with takes one to two seconds.
POOL_WORTH_S = 4.0


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS says, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _one_thread_each() -> None:
    """Worker set-up: one OpenCV thread, so the workers do not compete for the cores."""
    import cv2

    cv2.setNumThreads(1)


def ordered_map(
    function: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int | None = None,
    pool_worth_s: float | None = None,
) -> Iterator[R]:
    """Yield ``function(item)`` for every item, in the items' order, computed by up to
    ``workers`` processes (default: :func:`available_cpus`).

    The first item runs in this process and is timed: only when the rest would take more than
    ``pool_worth_s`` seconds (default :data:`POOL_WORTH_S`) at that pace does a pool start for
    them (a handful of small items, as in tests, stays in this process). ``function`` must be
    picklable (a module-level function or a ``functools.partial`` of one). Workers are spawned,
    not forked: a fork copies the caller's thread pools (OpenCV's, PyTorch's) without their
    threads, and the first call into such a pool in the child can wait forever; so, as with any
    spawning pool, a script that calls this at import time needs the ``if __name__ ==
    "__main__":`` guard. An exception in a worker is raised here, at its item."""
    items = list(items)
    if not items:
        return
    started = time.perf_counter()
    first = function(items[0])
    took = time.perf_counter() - started
    yield first
    rest = items[1:]
    workers = min(workers or available_cpus(), len(rest))
    worth = POOL_WORTH_S if pool_worth_s is None else pool_worth_s
    if workers <= 1 or took * len(rest) < worth:
        yield from map(function, rest)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread_each) as pool:
        yield from pool.map(function, rest)
