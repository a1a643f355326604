"""`mri-triage serve`: the deployment and its cron schedule, built without waiting to fire."""

from __future__ import annotations

from pathlib import Path

from flows.triage import build_deployment
from pipeline.cli.main import build_parser


def test_serve_builds_nightly_cron_deployment(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["serve", str(tmp_path / "arch"), "--out", str(tmp_path / "out"), "--threshold", "0.95"]
    )
    assert args.cron == "0 2 * * *"
    dep = build_deployment(args)
    assert dep.name == "nightly" and dep.flow_name == "mri-triage"
    crons = [s.schedule.cron for s in dep.schedules]
    assert crons == ["0 2 * * *"]
    assert dep.parameters["archive"] == str((tmp_path / "arch").absolute())
    assert dep.parameters["out"] == str((tmp_path / "out").absolute())
    assert dep.parameters["threshold"] == 0.95


def test_serve_takes_another_cron(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["serve", str(tmp_path), "--out", str(tmp_path / "o"), "--cron", "30 1 * * 1-5"]
    )
    assert [s.schedule.cron for s in build_deployment(args).schedules] == ["30 1 * * 1-5"]


def test_prefect_yaml_deploys_the_triage_flow_to_a_work_pool() -> None:
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    repo = Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((repo / "prefect.yaml").read_text())
    (dep,) = spec["deployments"]
    assert dep["work_pool"]["name"] and dep["schedules"][0]["cron"] == "0 2 * * *"
    flow = load_flow_from_entrypoint(str(repo / dep["entrypoint"]))
    assert flow.name == "mri-triage"
    assert set(dep["parameters"]) <= set(flow.parameters.properties)
    from pipeline.cli.main import OFFLINE_ENV

    env = dep["work_pool"]["job_variables"]["env"]  # TensorFlow as the command runs it
    assert env["TF_ENABLE_ONEDNN_OPTS"] == OFFLINE_ENV["TF_ENABLE_ONEDNN_OPTS"] == "1"
