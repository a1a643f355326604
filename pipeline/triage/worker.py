"""How one worker goes through its patients: read ahead, run the models, write behind.

`work_through(jobs)` runs `pipeline.triage.inference`'s three patient stages on
`pipeline.triage.prefetch`'s bounded pipeline: while the models work on one patient, a loader thread
reads the next ones (their manifest key, slices and preprocessing, at most `TriageSettings.prefetch`
of them waiting and at most `IN_FLIGHT_SLICES` slices in flight) and a writer thread
post-processes and writes the previous one, then hands freed memory back to the system
(`release_freed_memory`). Its results are the `PatientResult`s
that `process_patient` gives for each job in turn, in the same order; `prefetch=0` is exactly
that, in the caller's thread. A patient whose reading, models or writing fails comes back as its
own `FAILED` result and the others go on.

`lanes(jobs, n)` deals a run's jobs to `n` workers (`bench triage` runs `workers` patients at
once that way with `prefetch=0`); workers share the models (one model call at a time per process,
`pipeline.triage.predictor.BatchPredictor`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.triage.prefetch import Finished, QueueWatch, pipelined
from pipeline.triage.settings import TriageSettings

if TYPE_CHECKING:
    from pipeline.triage.records import PatientResult
    from pipeline.triage.run import PatientJob


def lanes(jobs: Sequence[PatientJob], n: int) -> list[list[PatientJob]]:
    """Deal `jobs` round-robin to at most `n` workers (no empty lane), so they finish together."""
    if n < 1:
        raise ValueError(f"need at least one worker, got {n}")
    return [list(jobs[i::n]) for i in range(min(n, len(jobs)))]


_trim: list[Callable[[int], int] | None] = []


def _libc_function(name: str) -> Any:
    """The C library's function `name`, or None where there is no such library or function."""
    lib = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(lib), name, None) if lib else None


def release_freed_memory() -> None:
    """Hand the memory a finished patient freed back to the system (glibc's `malloc_trim`).

    glibc keeps freed blocks in per-thread arenas: a patient's arrays are allocated on the loader
    thread and freed on the writer, and the arenas' high-water marks crept up with every larger
    patient (peak RSS of 70 synthetic patients 1.03-1.08x that of the first 10; 1.005x with this
    after each patient). A no-op where the C library has no `malloc_trim`.
    """
    if not _trim:
        _trim.append(_libc_function("malloc_trim"))
    if _trim[0] is not None:
        _trim[0](0)


#: glibc's `mallopt` parameter number for the mmap threshold (malloc.h: `M_MMAP_THRESHOLD`).
M_MMAP_THRESHOLD = -3
#: Blocks at least this large are mapped on their own and unmapped when freed (glibc's default).
MMAP_THRESHOLD = 128 * 1024
_mallopt_done: list[bool] = []


def map_large_blocks() -> bool:
    """Fix glibc's mmap threshold at its 128 KiB default, so a patient's arrays are mapped on their
    own and go back to the system the moment they are freed. Returns whether it was set.

    glibc raises the threshold each time a mapped block is freed (up to 32 MiB), after which
    arrays of a slice or more come from the arenas and leave holes the next patient does not fit:
    the peak RSS of a run then follows its largest patients. Fixed (and
    `release_freed_memory` after each patient), the int8 peak for the largest real LGG patient
    (80 slices, every slice segmented) fell from 691 to 635 MB, the first ten patients' from 634
    to 598 MB (`MALLOC_MMAP_THRESHOLD_=131072` has the same effect). A no-op off glibc, and when
    the user set `MALLOC_MMAP_THRESHOLD_` themselves.
    """
    if _mallopt_done:
        return _mallopt_done[0]
    ok = False
    mallopt = _libc_function("mallopt")
    if mallopt is not None and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    _mallopt_done.append(ok)
    return ok


#: Most slices a worker holds in flight (read, waiting, in the models, being written) when it reads
#: ahead: the next patient is read only while the patients in flight have fewer slices than this
#: with it (a larger patient still runs, alone), so large patients next to each other do not pile
#: up. Above what ten ordinary LGG patients keep in flight (22.6 slices on average).
IN_FLIGHT_SLICES = 128


def _slices(job: PatientJob) -> int:
    return len(job.rows)


def _shared(jobs: Sequence[PatientJob]) -> tuple[Path, dict[str, str | None], TriageSettings]:
    """The output folder, models and settings every job of one run shares."""
    first = jobs[0]
    for job in jobs[1:]:
        if (job.out, job.uris, job.settings) != (first.out, first.uris, first.settings):
            raise ValueError("a worker's jobs must share their output folder, models and settings")
    return Path(first.out), first.uris, TriageSettings(**first.settings)


def work_through(jobs: Sequence[PatientJob], watch: QueueWatch | None = None) -> Iterator[Any]:
    """Every job's `PatientResult`, in order, with reading and writing overlapping the models.

    Args:
        jobs: one run's patient jobs (same output folder, models and settings).
        watch: `pipeline.triage.prefetch.pipelined`'s queue hook (tests, diagnostics).

    Yields:
        `PatientResult` per job, as each is written (`DONE`, `SKIPPED` or `FAILED`).

    Raises:
        ValueError: the jobs do not share their settings; whatever loading the models raises.
    """
    import pandas as pd

    from pipeline.triage import inference as inf

    if not jobs:
        return
    out, uris, settings = _shared(jobs)
    map_large_blocks()
    models = settings.load_models(uris["classifier"], uris["segmenter"])

    def load(job: PatientJob) -> Any:
        rows = pd.DataFrame(job.rows)
        started = inf.start_patient(rows, out, models, settings, job.previous, job.force)
        return started if isinstance(started, inf.PatientWork) else Finished(started)

    def write(work: inf.PatientWork) -> PatientResult:
        result = inf.finish_patient(work, out, models, settings)
        release_freed_memory()  # what the patients before this one freed
        return result

    def fail(job: PatientJob, exc: Exception) -> PatientResult:
        return inf.failed_patient(str(job.rows[0]["patient"]), exc)

    yield from pipelined(
        jobs,
        load,
        lambda work: inf.predict_patient(work, models, settings),
        write,
        fail,
        settings.prefetch,
        watch,
        weight=_slices,
        budget=IN_FLIGHT_SLICES,
    )
