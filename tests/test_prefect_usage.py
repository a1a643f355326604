"""Prefect as its users expect: the deployment's time zone and concurrency limit, and the run's
summary published as a markdown artifact (no patient keys)."""

from __future__ import annotations

from pathlib import Path

import pytest
import triage_helpers as th

from flows.triage import build_deployment, triage_flow
from pipeline.cli.main import build_parser
from pipeline.io.synthetic import write_synthetic_archive


def test_deployment_has_time_zone_and_one_run_at_a_time(tmp_path: Path) -> None:
    argv = [
        "serve",
        str(tmp_path / "a"),
        "--out",
        str(tmp_path / "o"),
        "--timezone",
        "Europe/Berlin",
    ]
    dep = build_deployment(build_parser().parse_args(argv))
    (schedule,) = dep.schedules
    assert schedule.schedule.timezone == "Europe/Berlin" and schedule.schedule.cron == "0 2 * * *"
    limit = dep.concurrency_limit
    assert getattr(limit, "limit", limit) == 1


@pytest.mark.usefixtures("prefect_harness")
def test_run_summary_is_a_markdown_artifact(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    archive = write_synthetic_archive(tmp_path / "a", 2, "kaggle", seed=4, slices=4, image_size=64)
    clf = th.save(th.bright_classifier(), tmp_path / "c.keras", "classifier")
    seg = th.save(th.bright_segmenter(), tmp_path / "s.keras", "segmenter")
    triage_flow(str(archive), str(tmp_path / "out"), clf, seg, 0.5, track=False)
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["mri-triage-worklist"]))
        )
    # The session's Prefect API holds other tests' runs too: take this run's artifact.
    found = [a for a in found if str(tmp_path / "out") in str(a.data)]
    assert len(found) == 1 and found[0].type == "markdown"
    text = str(found[0].data)
    assert "| Patients | 2 |" in text and "P(tumour) > 0.5" in text and "index.html" in text
    assert "SYN_0001" not in text  # counts only: patient keys stay in the output folder


@pytest.mark.usefixtures("prefect_harness")
def test_mlflow_logging_is_retried_when_the_server_is_briefly_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect import flow

    from flows.triage import log_mlflow_run
    from pipeline import tracking

    calls: list[int] = []

    def flaky(*args: object, **kwargs: object) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("tracking server restarting")
        return "run-id"

    monkeypatch.setattr(tracking, "log_triage_run", flaky)

    @flow
    def once() -> str:
        return log_mlflow_run.with_options(retry_delay_seconds=0)({}, {}, ".")

    assert once() == "run-id" and len(calls) == 2
