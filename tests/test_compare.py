"""`mri-triage compare`: tables built from runs, the paper's figures beside them."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline import tracking
from pipeline.cli import compare
from pipeline.cli.main import main


def _run(run_id: str, model: str, stage: str, metrics: dict[str, float]) -> dict[str, object]:
    return {
        "run_id": run_id,
        "name": f"{model}-2026-11-22T10-31",
        "model": model,
        "stage": stage,
        "metrics": metrics,
    }


def _tables(model: str, total: int) -> dict[str, pd.DataFrame]:
    return {
        "table_2": pd.DataFrame(
            [
                {
                    "model": model,
                    "epoch": 2,
                    "train_accuracy": 0.9,
                    "train_loss": 0.3,
                    "val_accuracy": 0.8,
                    "val_loss": 0.4,
                }
            ]
        ),
        "table_3": pd.DataFrame(
            [
                {
                    "model": model,
                    "total_params": total,
                    "trainable_params": total - 10,
                    "non_trainable_params": 10,
                }
            ]
        ),
        "table_4": pd.DataFrame(
            [
                {
                    "model": model,
                    "training_images": 100,
                    "image_size": "64x64",
                    "epochs": 2,
                    "learning_rate": 1e-4,
                    "parameters": total,
                    "training_time_s": 12.5,
                }
            ]
        ),
    }


def test_build_tables_puts_paper_rows_beside_ours() -> None:
    runs = [
        _run("a", "resnet50", "classifier", {"test_accuracy": 0.91, "test_roc_auc": 0.95}),
        _run("b", "resunet", "segmenter", {"test_dice_patient_mean": 0.7}),
        _run("c", "vgg16", "classifier", {}),
    ]
    tables = {
        "a": _tables("resnet50", 1000),
        "b": _tables("resunet", 500),
        "c": _tables("vgg16", 7),
    }
    out = compare.build_tables(runs, tables)
    t3 = out["table_3"]
    assert list(t3.columns[:5]) == [
        "run",
        "model",
        "total_params",
        "trainable_params",
        "non_trainable_params",
    ]
    paper = t3[t3["run"] == "paper"].set_index("model")
    assert paper.loc["resnet50", "total_params"] == 25_817_218
    assert paper.loc["resunet", "non_trainable_params"] == 4_384
    assert paper.loc["vgg16", "total_params"] == 15_371_330
    assert "copies ResNet50" in paper.loc["vgg16", "note"]
    t2 = out["table_2"]
    assert t2[t2["run"] == "paper"][["train_accuracy", "val_loss"]].isna().all().all()
    t4 = out["table_4"].set_index(["run", "model"])
    assert t4.loc[("paper", "resunet"), "learning_rate"] == 1e-5
    test = out["test"].set_index("model")
    assert test.loc["resnet50", "roc_auc"] == 0.95
    assert test.loc["resunet", "dice_patient_mean"] == 0.7

    md = compare.render(out, "markdown")
    assert "### Table 2" in md and "| 25,817,218 |" in md and "### Test metrics" in md
    csv = compare.render(out, "csv")
    assert "# table_3\nrun,model,total_params" in csv


def test_compare_with_no_runs_says_so(mlflow_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare"]) == 1
    assert "no finished runs" in capsys.readouterr().err


def test_compare_reads_logged_tables(mlflow_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    with tracking.start_run(
        "mri-triage-segmenter",
        "resunet-2026-11-22T10-31",
        {"model": "resunet", "stage": "segmenter"},
    ) as run_id:
        for name, table in _tables("resunet", 500).items():
            tracking.log_table(run_id, table, name)
        tracking.log_metrics(run_id, {"test_dice_patient_mean": 0.66})
    assert main(["compare", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "resunet-2026-11-22T10-31,resunet,500,490,10" in out
    assert "paper,resunet,1210513,1206129,4384" in out
    assert "0.66" in out
