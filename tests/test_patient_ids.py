"""Patient keys are identifiers: a run's log lines, Prefect's log records and task run names name
patients by their position in the run, unless the user opts in (`--log-patient-ids`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import triage_helpers as th

from pipeline.cli.main import build_parser
from pipeline.io.synthetic import write_synthetic_archive
from pipeline.triage.run import RunOptions, run_triage, serial_map

KEY = "ZELDA"  # patient keys ZELDA_0001, ZELDA_0002: nothing else in a run spells it


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("ids")
    archive = write_synthetic_archive(d / "arch", 2, "kaggle", 3, 4, 64, KEY)
    (archive / f"{KEY}_0002" / f"{KEY}_0002_4.tif").write_bytes(b"not a TIF")  # a failure
    return {
        "archive": str(archive),
        "clf": th.save(th.bright_classifier(), d / "c.keras", "classifier"),
        "seg": th.save(th.bright_segmenter(), d / "s.keras", "segmenter"),
    }


@pytest.mark.parametrize("opt_in", [False, True])
def test_run_logs_name_patients_by_position_unless_asked(
    setup: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture, opt_in: bool
) -> None:
    options = RunOptions(setup["clf"], setup["seg"], 0.5, track=False, log_patient_ids=opt_in)
    with caplog.at_level(logging.DEBUG):
        run_triage(setup["archive"], tmp_path / "out", options, serial_map)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "patient 1/2: done" in text or f"patient {KEY}_0001: done" in text
    if opt_in:
        assert f"patient {KEY}_0001: done" in text and f"{KEY}_0002" in text
    else:
        assert "patient 1/2: done" in text and "patient 2/2" in text and KEY not in text


def test_the_command_line_passes_the_opt_in(tmp_path: Path) -> None:
    from flows.triage import _flow_kwargs

    for argv, expected in (([], False), (["--log-patient-ids"], True)):
        args = build_parser().parse_args(["triage", str(tmp_path), "--out", "o", *argv])
        assert _flow_kwargs(args)["log_patient_ids"] is expected


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    "opt_in, prefetch", [(False, RunOptions.prefetch), (False, 0), (True, 0)]
)  # prefetch 0: a task per patient (as on Dask); else one worker task
def test_prefect_holds_no_patient_key_unless_asked(
    setup: dict[str, str], tmp_path: Path, opt_in: bool, prefetch: int
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    from flows.triage import triage_flow

    state = triage_flow(
        setup["archive"], str(tmp_path / "out"), setup["clf"], setup["seg"], 0.5, track=False,
        log_patient_ids=opt_in, prefetch=prefetch, return_state=True,
    )  # fmt: skip
    run_id = state.state_details.flow_run_id
    APILogWorker.drain_all(timeout=30)  # the run's log records are in Prefect's database now
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        this_run = FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        tasks = client.read_task_runs(flow_run_filter=this_run)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    names = sorted(t.name for t in tasks if t.name.startswith("triage-"))
    messages = "\n".join(log.message for log in logs)
    stored = "\n".join([*(t.name for t in tasks), messages, str(flow_run.parameters)])
    assert "triaging 2 patients" in messages
    if opt_in:
        assert names == [f"triage-patient-{KEY}_0001", f"triage-patient-{KEY}_0002"]
        assert f"patient {KEY}_0001: done" in messages
    else:
        assert "patient 1/2: done" in messages and KEY not in stored
        if prefetch == 0:
            assert names == ["triage-patient-1", "triage-patient-2"]
        else:
            assert names == ["triage-worker"]  # one worker task on threads, no key in its name
