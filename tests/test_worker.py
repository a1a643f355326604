"""`pipeline.triage.worker.work_through`: reading ahead and writing behind the models changes
nothing but speed (same results, order and files as one patient at a time), and a bad patient fails
alone."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import triage_helpers as th

from pipeline.io.synthetic import write_synthetic_archive
from pipeline.triage.inference import process_patient
from pipeline.triage.records import DONE, FAILED
from pipeline.triage.run import PatientJob
from pipeline.triage.settings import TriageSettings
from pipeline.triage.worker import lanes, work_through


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("worker") / "kaggle"
    return write_synthetic_archive(root, patients=5, fmt="kaggle", seed=11, slices=6, image_size=64)


@pytest.fixture(scope="module")
def uris(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    d = tmp_path_factory.mktemp("worker-models")
    return {
        "classifier": th.save(th.bright_classifier(), d / "c.keras", "classifier"),
        "segmenter": th.save(th.bright_segmenter(), d / "s.keras", "segmenter"),
    }


def _jobs(archive: Path, out: Path, uris: dict, prefetch: int) -> list[PatientJob]:
    from pipeline.io.index import build_index

    settings = TriageSettings(threshold=0.99, runtime="tf", prefetch=prefetch)
    groups = build_index(archive).table.groupby("patient", sort=True)
    return [PatientJob.of(rows, out, uris, settings, force=True) for _, rows in groups]


def _outputs(out: Path) -> dict[str, object]:
    """Every patient's output files; reports without their timings and the prefetch setting."""
    files: dict[str, object] = {}
    for path in sorted(out.glob("*/*")):
        if path.name == "report.json":
            rep = json.loads(path.read_text())
            rep.pop("timings_s")
            rep["settings"].pop("prefetch")
            files[str(path.relative_to(out))] = rep
        elif path.is_file() and path.suffix != ".html":  # pages embed the timings
            files[str(path.relative_to(out))] = path.read_bytes()
    return files


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("prefetch-")]


def test_results_order_and_files_are_the_same_with_and_without_prefetch(
    archive: Path, uris: dict, tmp_path: Path
) -> None:
    runs = {}
    for depth in (0, 1, 3):
        jobs = _jobs(archive, tmp_path / f"out{depth}", uris, depth)
        runs[depth] = [r for r in work_through(jobs)]
        assert _prefetch_threads() == []
    # The reference: `process_patient` on each patient in turn, as before the pipeline existed.
    jobs = _jobs(archive, tmp_path / "ref", uris, 0)
    models = TriageSettings(**jobs[0].settings).load_models(uris["classifier"], uris["segmenter"])
    import pandas as pd

    ref = [
        process_patient(pd.DataFrame(j.rows), tmp_path / "ref", models,
                        TriageSettings(**j.settings), None, True)
        for j in jobs
    ]  # fmt: skip
    strip = [(r.patient, r.status, r.key, r.findings, r.truth) for r in ref]
    assert [r.patient for r in ref] == [j.rows[0]["patient"] for j in jobs]
    assert all(r.status == DONE for r in ref) and any(r.findings.tumour_found for r in ref)
    for depth, results in runs.items():
        assert [(r.patient, r.status, r.key, r.findings, r.truth) for r in results] == strip
        assert _outputs(tmp_path / f"out{depth}") == _outputs(tmp_path / "ref")


def test_a_corrupt_patient_in_the_middle_fails_alone(
    archive: Path, uris: dict, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "archive"
    shutil.copytree(archive, copy)
    jobs = _jobs(copy, tmp_path / "out", uris, 2)
    bad = jobs[2].rows[0]
    Path(bad["image_path"]).write_bytes(b"not a tiff any more")  # broken after indexing
    results = list(work_through(jobs))
    assert [r.patient for r in results] == [j.rows[0]["patient"] for j in jobs]
    assert [r.status for r in results] == [DONE, DONE, FAILED, DONE, DONE]
    assert results[2].reason and not (tmp_path / "out" / results[2].output).exists()
    assert all((tmp_path / "out" / r.output / "report.json").is_file() for r in results if r.ok)
    assert _prefetch_threads() == []


def test_the_read_ahead_queue_stays_within_its_depth(
    archive: Path, uris: dict, tmp_path: Path
) -> None:
    sizes: dict[str, list[int]] = {"loaded": [], "computed": []}
    jobs = _jobs(archive, tmp_path / "out", uris, 1)
    results = list(work_through(jobs, watch=lambda name, size: sizes[name].append(size)))
    assert len(results) == len(jobs) == len(sizes["loaded"]) == len(sizes["computed"])
    assert max(sizes["loaded"]) <= 1 and max(sizes["computed"]) <= 1


def test_lanes_share_jobs_round_robin_and_jobs_must_share_settings(
    archive: Path, uris: dict, tmp_path: Path
) -> None:
    jobs = _jobs(archive, tmp_path / "out", uris, 2)
    shares = lanes(jobs, 2)
    assert [len(s) for s in shares] == [3, 2] and shares[0][1] is jobs[2]
    assert len(lanes(jobs[:1], 4)) == 1
    with pytest.raises(ValueError, match="at least one"):
        lanes(jobs, 0)
    other = _jobs(archive, tmp_path / "elsewhere", uris, 2)
    with pytest.raises(ValueError, match="share"):
        list(work_through([jobs[0], other[1]]))


def _task_names(state) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        return sorted(t.name for t in client.read_task_runs(flow_run_filter=flow_run))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_runs_one_worker_task_and_a_task_per_patient_without_prefetch(
    archive: Path, uris: dict, tmp_path: Path
) -> None:
    from flows.triage import triage_flow

    names = {}
    for prefetch in (2, 0):
        state = triage_flow(
            str(archive), str(tmp_path / f"out{prefetch}"), uris["classifier"], uris["segmenter"],
            threshold=0.99, track=False, runtime="tf", prefetch=prefetch, return_state=True,
        )  # fmt: skip
        result = state.result()
        assert result["exit_code"] == 0 and result["metrics"]["patients_done"] == 5
        names[prefetch] = [n for n in _task_names(state) if n.startswith("triage-")]
    assert names[2] == ["triage-worker"]
    assert names[0] == [f"triage-patient-{i}" for i in range(1, 6)]
    assert _outputs(tmp_path / "out2") == _outputs(tmp_path / "out0")


def test_large_blocks_are_mapped_on_their_own_where_glibc_allows(monkeypatch) -> None:
    import ctypes.util

    from pipeline.triage import worker

    monkeypatch.setattr(worker, "_mallopt_done", [])
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # the user's own setting wins
    assert worker.map_large_blocks() is False
    monkeypatch.setattr(worker, "_mallopt_done", [])
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    glibc = bool(ctypes.util.find_library("c")) and hasattr(
        ctypes.CDLL(ctypes.util.find_library("c")), "mallopt"
    )
    assert worker.map_large_blocks() is glibc
    assert worker.map_large_blocks() is glibc  # once per process, then remembered
    assert worker._mallopt_done == [glibc]
