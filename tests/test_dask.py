"""The real triage flow on a local Dask cluster through prefect-dask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import triage_helpers as th
from prefect_dask import DaskTaskRunner

from flows.triage import make_task_runner, triage_flow
from pipeline.io.synthetic import write_synthetic_archive


def test_runner_choice() -> None:
    assert not isinstance(make_task_runner(None), DaskTaskRunner)
    assert isinstance(make_task_runner("tcp://127.0.0.1:8786"), DaskTaskRunner)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_flow_on_local_dask_cluster(tmp_path: Path) -> None:
    archive = write_synthetic_archive(tmp_path / "a", 3, "kaggle", seed=5, slices=6, image_size=64)
    clf = th.save(th.bright_classifier(), tmp_path / "c.keras", "classifier")
    seg = th.save(th.bright_segmenter(), tmp_path / "s.keras", "segmenter")
    runner = make_task_runner("local", workers=1, processes=False)
    assert isinstance(runner, DaskTaskRunner)
    out = tmp_path / "out"
    result = triage_flow.with_options(task_runner=runner)(
        str(archive), str(out), classifier=clf, segmenter=seg, track=False
    )
    assert result["exit_code"] == 0
    assert result["metrics"]["patients_done"] == 3 and result["metrics"]["slices"] == 18
    for case in (p for p in archive.iterdir() if p.is_dir()):
        rep = json.loads((out / case.name / "report.json").read_text())
        assert len(rep["slices"]) == 6 and len(rep["masks"]) == 6
