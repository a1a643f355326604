"""Overlap a worker's reading and writing with its model calls: a bounded three-stage pipeline.

Each item (a patient) goes through three stages: `load` (read and preprocess: files and CPU),
`compute` (the model calls) and `write` (post-process, write, commit). `pipelined` runs `load` on
a loader thread that stays at most `depth` items ahead, `compute` on the caller's own thread, and
`write` on a writer thread at most one item behind: while the model works on one patient the next
ones are read and the previous one written, so a worker's time approaches its model time. At most
`depth + 4` items are alive at once (one being read, `depth` waiting, one in the model, one
waiting to be written, one being written), however long the archive: each stage drops its
reference to an item once the next stage has it. With a `weight` per item (a patient's slices) and
a `budget`, the loader also starts an item only while the items alive weigh no more than the
budget with it (or none is alive: an item heavier than the budget still runs, alone), so large
items next to each other cannot pile up: what is in memory is bounded by weight, not by count.

Results come out in input order. An exception in any stage of one item becomes that item's result
through `fail(item, exc)`, and the other items go on. A stage may return `Finished(result)` to
skip the stages after it (a patient already done needs no model). Both threads are joined before
the generator finishes, also when the consumer stops early or `fail` itself raises. `depth=0`
runs the same stages one item at a time in the caller's thread (no threads at all).

Generic on purpose (no pixels, no TensorFlow): `pipeline.triage.worker` wires in the triage stages
of `pipeline.triage.inference`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")  # an item (a patient's job)
R = TypeVar("R")  # an item's result

#: A stage's input or output: the previous stage's value, a `Finished`, or a `_Failed`.
Stage = Callable[[Any], Any]
#: Called after every put with the queue's name ("loaded" or "computed") and its size.
QueueWatch = Callable[[str, int], None]

_END = object()  # end of a stream
_POLL_S = 0.05  # how often a blocked thread looks whether the pipeline was stopped


@dataclass(frozen=True)
class Finished(Generic[R]):
    """Returned by a stage when an item needs no further stage; `result` is its result."""

    result: R


@dataclass(frozen=True)
class _Failed:
    exc: Exception


def _advance(stage: Stage, value: Any) -> Any:
    """`stage(value)`, passing finished and failed items through and catching a failure."""
    if isinstance(value, Finished | _Failed):
        return value
    try:
        return stage(value)
    except Exception as exc:  # one item's failure stays with that item
        return _Failed(exc)


def _result(item: T, value: Any, fail: Callable[[T, Exception], R]) -> R:
    if isinstance(value, Finished):
        return value.result  # type: ignore[no-any-return]
    if isinstance(value, _Failed):
        return fail(item, value.exc)
    return value  # type: ignore[no-any-return]


def run_one(
    item: T, load: Stage, compute: Stage, write: Stage, fail: Callable[[T, Exception], R]
) -> R:
    """The three stages of one item in this thread (what `pipelined` does with `depth=0`)."""
    value = _advance(write, _advance(compute, _advance(load, item)))
    return _result(item, value, fail)


class _Budget:
    """The weight of the items alive (loading up to written), held below a limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.cond = threading.Condition()

    def take(self, weight: int, stop: threading.Event) -> bool:
        """Wait until `weight` fits (or nothing is alive); False when the pipeline was stopped."""
        with self.cond:
            while self.used > 0 and self.used + weight > self.limit:
                if stop.is_set():
                    return False
                self.cond.wait(_POLL_S)
            self.used += weight
            return True

    def give(self, weight: int) -> None:
        with self.cond:
            self.used -= weight
            self.cond.notify_all()


class _Pipe:
    """The two queues and two threads of one `pipelined` call."""

    def __init__(
        self,
        depth: int,
        watch: QueueWatch | None,
        weight: Callable[[Any], int] | None = None,
        budget: int = 0,
    ) -> None:
        self.loaded: queue.Queue[Any] = queue.Queue(maxsize=depth)
        # One behind: a slow disk holds the model back instead of piling up patients to write.
        self.computed: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.results: queue.Queue[Any] = queue.Queue()  # small records only
        self.stop = threading.Event()
        self.watch = watch
        self.errors: list[BaseException] = []  # a thread's own crash (not an item's failure)
        self.weight = weight if weight is not None and budget > 0 else None
        self.budget = _Budget(budget)

    def weigh(self, item: Any) -> int:
        return 0 if self.weight is None else max(int(self.weight(item)), 0)

    def put(self, name: str, q: queue.Queue[Any], value: Any) -> bool:
        """Put, waiting for room unless the pipeline is stopped; False when it was stopped."""
        while not self.stop.is_set():
            try:
                q.put(value, timeout=_POLL_S)
            except queue.Full:
                continue
            if self.watch is not None and value is not _END:
                self.watch(name, q.qsize())
            return True
        return False

    def get(self, q: queue.Queue[Any]) -> Any:
        """Get, waiting unless the pipeline is stopped (then `_END`)."""
        while not self.stop.is_set():
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return _END


def _loader(pipe: _Pipe, items: Iterable[Any], load: Stage) -> None:
    try:
        for item in items:
            if pipe.stop.is_set() or not pipe.budget.take(pipe.weigh(item), pipe.stop):
                return
            if not pipe.put("loaded", pipe.loaded, (item, _advance(load, item))):
                return
    except BaseException as exc:  # the items iterable itself broke: end the run with it
        pipe.errors.append(exc)
    finally:
        pipe.put("loaded", pipe.loaded, _END)


def _writer(pipe: _Pipe, write: Stage, fail: Callable[[Any, Exception], Any]) -> None:
    try:
        while (got := pipe.get(pipe.computed)) is not _END:
            item, value = got
            pipe.results.put(_result(item, _advance(write, value), fail))
            weight = pipe.weigh(item)
            del got, item, value  # release the patient's arrays before waiting for the next
            pipe.budget.give(weight)  # only then may the loader start more
    except BaseException as exc:  # `fail` itself broke: a bug, not a patient's failure
        pipe.errors.append(exc)
        pipe.stop.set()
    finally:
        pipe.results.put(_END)


def pipelined(
    items: Iterable[T],
    load: Stage,
    compute: Stage,
    write: Stage,
    fail: Callable[[T, Exception], R],
    depth: int = 2,
    watch: QueueWatch | None = None,
    weight: Callable[[T], int] | None = None,
    budget: int = 0,
) -> Iterator[R]:
    """Run `write(compute(load(item)))` for every item, the three stages overlapped.

    Args:
        items: the items, in order (read lazily by the loader thread).
        load: item -> loaded value (runs on the loader thread).
        compute: loaded value -> computed value (runs on the caller's thread).
        write: computed value -> result (runs on the writer thread).
        fail: (item, exception) -> the result of an item one of whose stages raised.
        depth: most items read and waiting for `compute`; 0 = no threads, one item at a time.
        watch: called after every put with the queue's name and size (tests, diagnostics).
        weight: an item's weight (e.g. its slices; called on the loader and the writer thread,
            so it must be cheap and give the same value each time); None = no weight bound.
        budget: most total weight of the items alive, from the start of their loading to the
            end of their writing (an item heavier than this runs alone); 0 = no bound.

    Yields:
        One result per item, in input order, as soon as it is written.

    Raises:
        Whatever the items iterable or `fail` raised (after both threads are joined).
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if depth == 0:
        for item in items:
            yield run_one(item, load, compute, write, fail)
        return
    pipe = _Pipe(depth, watch, weight, budget)
    threads = [
        threading.Thread(target=_loader, args=(pipe, items, load), name="prefetch-loader"),
        threading.Thread(target=_writer, args=(pipe, write, fail), name="prefetch-writer"),
    ]
    for thread in threads:
        thread.start()
    try:
        while True:
            try:
                got = pipe.loaded.get(timeout=_POLL_S)
            except queue.Empty:  # the loader is slower than the model: pass results on meanwhile
                yield from _ready(pipe)
                if pipe.stop.is_set():
                    break
                continue
            if got is _END:
                break
            item, value = got
            del got
            if not pipe.put("computed", pipe.computed, (item, _advance(compute, value))):
                break
            del item, value  # the writer has the patient now
            yield from _ready(pipe)
        pipe.put("computed", pipe.computed, _END)
        while (res := pipe.results.get()) is not _END:
            yield res
    finally:
        pipe.stop.set()  # a consumer that stopped early, or a crash: unblock both threads
        for thread in threads:
            thread.join()
    if pipe.errors:
        raise pipe.errors[0]


def _ready(pipe: _Pipe) -> Iterator[Any]:
    """The results already written (without waiting); `_END` stays for the final drain."""
    while True:
        try:
            res = pipe.results.get_nowait()
        except queue.Empty:
            return
        if res is _END:  # the writer stopped early (it crashed): the final drain reports it
            pipe.results.put(_END)
            return
        yield res
