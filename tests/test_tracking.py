"""pipeline.tracking against a real SQLite MLflow store in tmp_path."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from pipeline import tracking
from pipeline.io.preprocess import PreprocessConfig


def _tiny(kind: str, size: int = 8) -> keras.Model:
    inp = keras.Input((size, size, 3), name="image")
    if kind == "classifier":
        x = keras.layers.Flatten(name="flat")(inp)
        out = keras.layers.Dense(2, activation="softmax", name="probs")(x)
    else:
        out = keras.layers.Conv2D(1, 1, activation="sigmoid", name="mask")(inp)
    return keras.Model(inp, out, name=f"tiny_{kind}")


def test_run_name_and_artifact_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import datetime

    assert (
        tracking.run_name("resnet50", datetime(2026, 11, 22, 10, 31)) == "resnet50-2026-11-22T10-31"
    )
    monkeypatch.delenv("MRI_TRIAGE_ARTIFACT_ROOT", raising=False)
    loc = tracking._artifact_location(f"sqlite:///{tmp_path}/x/mlflow.db", "exp")
    assert loc == (tmp_path / "x" / "artifacts" / "exp").as_uri()
    assert tracking._artifact_location("http://mlflow.example:5000", "exp") is None
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tracking.repo_root()
    assert root is not None and (root / "pipeline" / "tracking.py").is_file()


def test_runs_tables_epoch_logger_and_failure(mlflow_uri: str, tmp_path: Path) -> None:
    assert tracking.configure_tracking() == mlflow_uri
    with tracking.start_run("mri-triage-test", "tiny-run", {"lr": 1e-4, "loss": None}) as run_id:
        model = _tiny("classifier")
        model.compile(
            optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        x = np.random.default_rng(0).random((8, 8, 8, 3), dtype=np.float32)
        y = np.array([0, 1] * 4)
        model.fit(
            x,
            y,
            validation_data=(x, y),
            epochs=3,
            verbose=0,
            callbacks=[tracking.epoch_logger(run_id)],
        )
        tracking.log_table(
            run_id, pd.DataFrame({"model": ["tiny"], "total_params": [386]}), "table_3"
        )
        tracking.log_metrics(run_id, {"test_auc": 0.5, "undefined": float("nan")})
    run = tracking.get_run(run_id)
    assert run["status"] == "FINISHED"
    assert run["params"] == {"lr": "0.0001", "loss": "none"}
    assert len(tracking.metric_history(run_id, "val_loss")) == 3
    assert len(tracking.metric_history(run_id, "accuracy")) == 3
    assert "undefined" not in run["metrics"]
    arts = tracking.list_artifacts(run_id, "tables")
    assert {"tables/table_3.json", "tables/table_3.csv"} <= set(arts)
    assert tracking.load_table(run_id, "table_3")["total_params"].tolist() == [386]
    # artifacts live where the conftest says, not in ./mlruns
    assert list((tmp_path / "artifacts" / "mri-triage-test").glob("*/artifacts/tables/table_3.csv"))

    with (
        pytest.raises(RuntimeError, match="boom"),
        tracking.start_run("mri-triage-test", "failing") as failed_id,
    ):
        raise RuntimeError("boom")
    failed = tracking.get_run(failed_id)
    assert failed["status"] == "FAILED"
    assert "boom" in failed["tags"]["error"]
    assert tracking.search_runs(["mri-triage-test"])["run_id"].tolist() == [run_id]


def test_registry_champion_and_load_model(mlflow_uri: str, tmp_path: Path) -> None:
    pre = PreprocessConfig(image_size=8)
    x = np.random.default_rng(1).random((2, 8, 8, 3), dtype=np.float32)
    scores, versions = [0.7, 0.6, 0.8], []
    for i, score in enumerate(scores):
        with tracking.start_run("mri-triage-classifier", f"tiny-{i}") as run_id:
            info = tracking.log_keras_model(
                run_id, _tiny("classifier"), "classifier", pre, operating_point=0.97
            )
            versions.append(info["version"])
            decision = tracking.promote_if_better("classifier", info["version"], "roc_auc", score)
        assert decision["champion"] == (i != 1), (i, decision)
    assert versions == ["1", "2", "3"]
    forced = tracking.promote_if_better("classifier", "2", "roc_auc", 0.6, force=True)
    assert forced["champion"] and forced["previous"] == "3"
    # A score measured on patients the model trained on (train_on_val) is compared with nothing.
    in_sample = tracking.promote_if_better("classifier", "3", "roc_auc", 0.99, in_sample=True)
    assert not in_sample["champion"] and in_sample["previous"] == "2"

    loaded = tracking.load_model("models:/mri-triage-classifier@champion")
    assert loaded.version == "mri-triage-classifier/2"
    assert loaded.kind == "classifier" and loaded.preprocess == pre
    assert loaded.info["operating_point"] == pytest.approx(0.97)
    assert loaded.model.predict(x, verbose=0).shape == (2, 2)
    assert (
        tracking.load_model("models:/mri-triage-classifier/3").version == "mri-triage-classifier/3"
    )
    by_run = tracking.load_model(f"runs:/{run_id}/model")
    assert by_run.model.predict(x, verbose=0).shape == (2, 2)
    with pytest.raises(ValueError, match="cannot load"):
        tracking.load_model("models:/mri-triage-classifier/99")
    with pytest.raises(RuntimeError, match="inside start_run"):
        tracking.log_keras_model("nope", _tiny("classifier"), "classifier", pre)


def test_local_model_pair_round_trip(tmp_path: Path) -> None:
    model = _tiny("segmenter")
    path = tracking.save_local_model(
        model, tmp_path / "seg", "segmenter", PreprocessConfig(image_size=8), note="tiny"
    )
    assert path.suffix == ".keras" and path.with_suffix(".json").is_file()
    loaded = tracking.load_model(str(path))
    assert (loaded.kind, loaded.version, loaded.info) == (
        "segmenter",
        "seg.keras",
        {"note": "tiny"},
    )
    x = np.random.default_rng(2).random((1, 8, 8, 3), dtype=np.float32)
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), model.predict(x, verbose=0))
    path.with_suffix(".json").unlink()
    bare = tracking.load_model(str(path))
    assert bare.kind == "segmenter" and bare.preprocess.image_size == 8
    with pytest.raises(FileNotFoundError):
        tracking.load_model(str(tmp_path / "missing.keras"))
