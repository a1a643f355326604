"""Defaults in one place (`pipeline.triage.settings`), and a library that stays in its layer:
importing it changes no environment and no MLflow setting, and never imports the Prefect flows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest

from flows.triage import _flow_kwargs, triage_flow
from pipeline.cli.main import build_parser
from pipeline.io.index import limits_of
from pipeline.io.quality import DEFAULT_LIMITS
from pipeline.triage.settings import RunOptions, TriageSettings

REPO = Path(__file__).resolve().parents[1]


def test_the_command_line_flow_and_settings_share_their_defaults(tmp_path: Path) -> None:
    d = RunOptions()
    for command in ("triage", "serve"):
        args = build_parser().parse_args([command, str(tmp_path), "--out", str(tmp_path / "o")])
        kwargs = _flow_kwargs(args)
        for name in ("min_component", "batch", "precision", "runtime", "ov_precision", "prefetch",
                     "xla"):  # fmt: skip
            assert getattr(args, name) == getattr(d, name), (command, name)
            assert kwargs[name] == getattr(d, name), (command, name)
        assert not kwargs["log_patient_ids"] and not kwargs["log_outputs"]
        assert limits_of(args) == DEFAULT_LIMITS
    schema = triage_flow.parameters.properties
    for f in fields(RunOptions):
        default = schema[f.name].get("default") if f.name in schema else None
        if f.name not in ("limits", "postprocess") and default is not None:
            assert default == getattr(d, f.name), f.name
    assert set(schema) >= {f.name for f in fields(RunOptions)}  # every option is a parameter
    bench = build_parser().parse_args(["bench", "triage", str(tmp_path)])
    assert (bench.batch, bench.precision) == (TriageSettings.batch, TriageSettings.precision)
    assert (d.batch, d.precision, d.runtime) == (TriageSettings.batch, TriageSettings.precision,
                                                 TriageSettings.runtime)  # fmt: skip


def _child(code: str, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_every_library_module_changes_no_environment_and_imports_no_flows() -> None:
    code = """
        import importlib, json, os, pkgutil, sys
        import cv2  # OpenCV's own import adds its lib64 to LD_LIBRARY_PATH: its doing, not ours
        import pipeline
        before = dict(os.environ)
        names = sorted(m.name for m in pkgutil.walk_packages(pipeline.__path__, "pipeline."))
        for name in names:
            importlib.import_module(name)
        changed = sorted(k for k in set(before) | set(os.environ)
                         if before.get(k) != os.environ.get(k))
        flows = sorted(m for m in sys.modules if m == "flows" or m.startswith("flows."))
        print(json.dumps({"modules": names, "changed": changed, "flows": flows}))
    """
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "DO_NOT_TRACK")}
    out = _child(code, env)
    assert "pipeline.cli" in out["modules"] and "pipeline.triage.run" in out["modules"]
    assert out["changed"] == [] and out["flows"] == []


@pytest.mark.slow
def test_reading_the_registry_leaves_the_callers_mlflow_settings_alone(
    tmp_path: Path, mlflow_uri: str
) -> None:
    """A notebook that pointed MLflow at its own store keeps it: the read-only helpers read from
    that store and configure nothing (no tracking URI set, no experiment created)."""
    import triage_helpers as th

    from pipeline import tracking
    from pipeline.io.preprocess import PreprocessConfig

    with tracking.start_run("mri-triage-classifier", "only") as run_id:
        pre = PreprocessConfig(image_size=th.SIZE)
        tracking.log_keras_model(run_id, th.bright_classifier(), "classifier", pre)
    tracking.promote_if_better("classifier", "1", "auc", 0.9)  # version 1 becomes champion
    code = f"""
        import json, mlflow
        mlflow.set_tracking_uri({mlflow_uri!r})  # the caller's own choice, not the environment
        from pipeline import tracking
        runs = tracking.search_runs(["mri-triage-classifier", "no-such-experiment"])
        run = tracking.get_run({run_id!r})
        version, _ = tracking.model_reference("models:/mri-triage-classifier@champion")
        names = [e.name for e in mlflow.MlflowClient().search_experiments()]
        print(json.dumps({{"runs": runs["run_id"].tolist(), "name": run["name"],
                          "version": version, "uri": mlflow.get_tracking_uri(),
                          "experiments": names}}))
    """
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = _child(code, env)
    assert out["runs"] == [run_id] and out["name"] == "only"
    assert out["version"] == "mri-triage-classifier/1" and out["uri"] == mlflow_uri
    assert "no-such-experiment" not in out["experiments"]
