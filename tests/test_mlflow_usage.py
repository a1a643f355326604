"""MLflow as its users expect: described experiments in model-training mode, the training data as
a dataset input (fingerprint, no patient keys), model cards on registered versions, a logged
model without optimizer state, and a triage run whose duration spans the work."""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import numpy as np
import triage_helpers as th
from mlflow.tracking import MlflowClient

from pipeline import tracking, tracking_meta
from pipeline.io.preprocess import PreprocessConfig
from pipeline.io.synthetic import write_synthetic_archive
from pipeline.learn.training import plan_data


def test_experiments_are_described_and_in_model_training_mode(mlflow_uri: str) -> None:
    exp_id = tracking.experiment_id("mri-triage-classifier")
    tags = MlflowClient().get_experiment(exp_id).tags
    assert tags["mlflow.note.content"].startswith("Slice classifiers")
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_training_data_is_a_dataset_input_without_patient_keys(
    mlflow_uri: str, tmp_path: Path
) -> None:
    archive = write_synthetic_archive(tmp_path / "a", 6, "kaggle", seed=1, slices=4, image_size=32)
    plan = plan_data(str(archive), seed=0)
    with tracking.start_run("mri-triage-test", "data") as run_id:
        tracking_meta.log_training_data(run_id, plan, str(archive))
    (inp,) = MlflowClient().get_run(run_id).inputs.dataset_inputs
    assert inp.dataset.digest == plan.fingerprint[:36] and inp.dataset.name == "a"
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    profile = json.loads(inp.dataset.profile)
    assert profile["slices"] == len(plan.table) and sum(profile["patients_per_split"].values()) == 6
    blob = json.dumps(inp.dataset.to_dictionary())
    assert not any(p in blob for p in plan.table["patient"].unique())


def test_model_version_card_and_size_without_optimizer(mlflow_uri: str, tmp_path: Path) -> None:
    model = th.bright_segmenter()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).random((4, th.SIZE, th.SIZE, 3), dtype=np.float32)
    model.fit(x, (x[..., 1:2] > 0.8).astype(np.float32), epochs=1, verbose=0)  # adam state
    with tracking.start_run("mri-triage-segmenter", "card") as run_id:
        logged = tracking.log_keras_model(
            run_id, model, "segmenter", PreprocessConfig(image_size=th.SIZE)
        )
    info = {
        "architecture": "resunet",
        "preset": "cpu",
        "selection_metric": "dice",
        "val_score": 0.8,
    }
    data = {"fingerprint": "abcdef0123456789", "slices": 10, "patients_per_split": {"train": 3}}
    card = tracking_meta.model_card("segmenter", info, {}, {"dice": 0.75}, data)
    tracking_meta.describe_model_version("segmenter", logged["version"], card)
    version = MlflowClient().get_model_version("mri-triage-segmenter", logged["version"])
    assert "abcdef012345" in version.description and "dice 0.75" in version.description
    with_state = tmp_path / "with_optimizer.keras"
    model.save(with_state)
    (logged_file,) = (tmp_path / "artifacts").rglob("*.keras")
    assert logged_file.stat().st_size < with_state.stat().st_size
    assert getattr(keras.models.load_model(logged_file, compile=False), "optimizer", None) is None


def test_triage_run_spans_the_work_and_uploads_outputs_only_on_request(
    mlflow_uri: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (out / "P1").mkdir(parents=True)
    (out / "P1" / "report.html").write_text("<p>P1</p>")
    started = time.time() - 30
    run_id = tracking.log_triage_run({"threshold": 0.9}, {"patients": 1.0}, out, include=[],
                                     started=started)  # fmt: skip
    run = MlflowClient().get_run(run_id)
    assert run.info.end_time - run.info.start_time >= 29_000 and run.info.status == "FINISHED"
    assert tracking.list_artifacts(run_id, "triage") == []
    assert run.data.metrics["patients"] == 1.0
