"""Shared fixtures: the real data beside the checkout, offline settings, Prefect's test harness."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_ENABLE_ONEDNN_OPTS": "1",  # as the `mri-triage` command runs TensorFlow
    "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MRI_TRIAGE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    """Return `path`, or skip (fail under CI=true) when the shared data is absent."""
    if path.exists():
        return path
    reason = f"shared data not found at {path} (set MRI_TRIAGE_SHARED_DATA)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + "; CI must have ../shared beside the clone")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`: real LGG slices and NIfTI cases (read-only)."""
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def kaggle_3m(shared_data: Path) -> Path:
    return _need(shared_data / "kaggle_3m")


@pytest.fixture(scope="session")
def nifti_dir(shared_data: Path) -> Path:
    return _need(shared_data / "nifti")


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A throwaway Prefect API for tests that run real flows (request it explicitly)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture()
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow at a fresh SQLite store in tmp_path (artifacts beside it)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MRI_TRIAGE_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    return uri
