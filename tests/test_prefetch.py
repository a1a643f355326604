"""`pipeline.triage.prefetch.pipelined`: order, per-item failures, bounded queues, threads
joined."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from pipeline.triage.prefetch import Finished, pipelined


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("prefetch-")]


def _fail(item: int, exc: Exception) -> str:
    return f"{item} failed: {exc}"


def _stages(bad: dict[str, int] | None = None):
    """load / compute / write that record the item, each raising for its `bad` item."""
    bad = bad or {}

    def stage(name: str):
        def run(value: tuple) -> tuple:
            if value[0] == bad.get(name):
                raise ValueError(f"broken {name}")
            return (*value, name)

        return run

    return (lambda i: stage("load")((i,))), stage("compute"), stage("write")


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_results_in_input_order_and_the_same_at_every_depth(depth: int) -> None:
    out = list(pipelined(range(20), *_stages(), _fail, depth=depth))
    assert out == [(i, "load", "compute", "write") for i in range(20)]
    assert _prefetch_threads() == []


@pytest.mark.parametrize("stage", ["load", "compute", "write"])
@pytest.mark.parametrize("depth", [0, 2])
def test_a_failure_in_any_stage_stays_with_its_item(stage: str, depth: int) -> None:
    out = list(pipelined(range(7), *_stages({stage: 3}), _fail, depth=depth))
    assert out[3] == f"3 failed: broken {stage}"
    assert [o for i, o in enumerate(out) if i != 3] == [
        (i, "load", "compute", "write") for i in range(7) if i != 3
    ]


def test_a_finished_item_skips_the_later_stages() -> None:
    calls: Counter[str] = Counter()

    def load(i: int) -> object:
        calls["load"] += 1
        return Finished(f"{i} was done") if i % 2 else i

    def compute(v: int) -> int:
        calls["compute"] += 1
        return v * 10

    def write(v: int) -> str:
        calls["write"] += 1
        return f"{v} written"

    out = list(pipelined(range(6), load, compute, write, _fail, depth=2))
    assert out == [
        "0 written",
        "1 was done",
        "20 written",
        "3 was done",
        "40 written",
        "5 was done",
    ]
    assert calls == Counter(load=6, compute=3, write=3)


@pytest.mark.parametrize("budget", [0, 10])
def test_a_weight_budget_bounds_what_is_in_flight_and_a_heavy_item_runs_alone(budget: int) -> None:
    """Weights as a patient's slices; the model is slow, so without a budget the loader runs
    ahead by `depth` items whatever they weigh."""
    weights = [4, 3, 9, 8, 2, 1, 15, 5, 5, 6, 1, 1]
    lock = threading.Lock()
    alive: list[int] = []
    peak_weight = 0
    alone: list[bool] = []

    def load(i: int) -> int:
        nonlocal peak_weight
        with lock:
            alive.append(i)
            if weights[i] > 10:
                alone.append(alive == [i])
            else:
                peak_weight = max(peak_weight, sum(weights[j] for j in alive))
        return i

    def compute(i: int) -> int:
        time.sleep(0.02)
        return i

    def write(i: int) -> int:
        with lock:
            alive.remove(i)
        return i

    out = pipelined(range(len(weights)), load, compute, write, _fail, depth=3,
                    weight=weights.__getitem__, budget=budget)  # fmt: skip
    assert list(out) == list(range(len(weights)))
    if budget:
        assert peak_weight <= budget
        assert alone == [True]  # the item above the budget waited for the others to finish
    else:
        assert peak_weight > 10  # unbounded by weight: the bound above is the budget's doing
    assert not _prefetch_threads()


def test_queues_never_hold_more_than_depth_and_in_flight_items_stay_bounded() -> None:
    """The model (compute) is held until the loader has filled its queue, so the bound is hit."""
    depth, sizes = 2, Counter[str]()
    full = threading.Event()
    lock = threading.Lock()
    alive = peak = 0

    def watch(name: str, size: int) -> None:
        sizes[name] = max(sizes[name], size)
        if name == "loaded" and size >= depth:
            full.set()

    def load(i: int) -> int:
        nonlocal alive, peak
        with lock:
            alive += 1
            peak = max(peak, alive)
        return i

    def compute(i: int) -> int:
        if i == 0:
            assert full.wait(10), "the loader never filled its queue"
        return i

    def write(i: int) -> int:
        nonlocal alive
        with lock:
            alive -= 1
        return i

    assert list(pipelined(range(30), load, compute, write, _fail, depth, watch)) == list(range(30))
    assert sizes["loaded"] == depth and sizes["computed"] <= 1
    assert 0 < peak <= depth + 4  # reading + queue + model + one waiting + writing


def test_threads_are_joined_when_the_consumer_stops_early() -> None:
    gen = pipelined(range(1000), *_stages(), _fail, depth=2)
    assert next(gen) == (0, "load", "compute", "write")
    gen.close()
    assert _prefetch_threads() == []


def test_a_crash_outside_the_items_stops_the_run_and_joins_the_threads() -> None:
    def fail(item: int, exc: Exception) -> str:
        raise RuntimeError("the failure handler itself is broken")

    with pytest.raises(RuntimeError, match="handler itself"):
        list(pipelined(range(50), *_stages({"load": 5}), fail, depth=2))
    assert _prefetch_threads() == []


def test_an_exception_in_the_consumer_joins_the_threads() -> None:
    with pytest.raises(KeyError):
        for out in pipelined(range(100), *_stages(), _fail, depth=1):
            if out[0] == 3:
                raise KeyError("consumer")
    assert _prefetch_threads() == []


def test_depth_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="depth"):
        list(pipelined(range(2), *_stages(), _fail, depth=-1))
