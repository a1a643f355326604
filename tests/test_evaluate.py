"""`mri-triage evaluate` for real on a small synthetic archive at 64 px (SQLite MLflow in tmp).

One fold of a 4-fold split trains both stages for one epoch (VGG16 stands in for ResNet50: the same
code path, faster tracing), triages the held-out patients, and the tests read what was printed,
written and logged. Accuracy is not asserted (one epoch learns little); the figures' presence,
their intervals, the run tree and the privacy of what MLflow holds are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline import tracking
from pipeline.cli.main import main
from pipeline.io.synthetic import write_synthetic_archive
from pipeline.learn.evaluate import EXPERIMENT, STATISTICS
from pipeline.learn.recipes import PRESETS

pytestmark = pytest.mark.slow
PATIENT_KEY = re.compile(r"SYN_\d{4}")
FAST = ["--classifier-size", "64", "--segmenter-size", "64", "--classifier-epochs", "1"]
FAST += ["--segmenter-epochs", "1", "--backbone", "vgg16", "--weights", "none", "--n-boot", "100"]
FAST += ["--classifier-pretrain-epochs", "1"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("evaluate")
    archive = write_synthetic_archive(
        tmp / "archive", 8, "kaggle", seed=5, slices=10, image_size=64
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("MRI_TRIAGE_ARTIFACT_ROOT", str(tmp / "artifacts"))
        out = tmp / "eval"
        rc = main(
            ["evaluate", str(archive), "--out", str(out), "--folds", "4", "--fold", "0", *FAST]
        )
        runs = tracking.search_runs([EXPERIMENT, *tracking.EXPERIMENTS.values()], status=None)
        yield {"tmp": tmp, "archive": archive, "out": out, "rc": rc, "runs": runs}


def test_every_metric_with_its_interval(evaluated: dict[str, Any], capsys: Any) -> None:
    assert evaluated["rc"] == 0
    result = json.loads((evaluated["out"] / "evaluation.json").read_text())
    overall = result["overall"]
    for name in STATISTICS:
        assert name in overall and f"{name}_low" in overall and f"{name}_high" in overall
    assert overall["patients"] == 2  # 8 patients, 4 folds
    assert 0.0 <= overall["segmenter_calls_saved"] <= 1.0
    low, high = overall["segmenter_calls_saved_low"], overall["segmenter_calls_saved_high"]
    assert low <= overall["segmenter_calls_saved"] <= high
    fold = result["folds"][0]
    assert fold["fold"] == 0 and fold["classifier_s"] > 0 and fold["segmenter_s"] > 0
    record = json.loads((evaluated["out"] / "fold-0" / "classifier.recipe.json").read_text())
    assert record["recipe"]["resolved"]["pretrain_epochs"] == 1  # the preset's 8, overridden
    assert 0.0 <= fold["threshold"] <= 1.0
    rows = (evaluated["out"] / "patients.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("fold,patient")
    assert rows[0].endswith(",hd95,recall,precision")


def test_mlflow_parent_fold_and_training_runs(evaluated: dict[str, Any]) -> None:
    runs = evaluated["runs"]
    ev = runs[runs["experiment"] == EXPERIMENT]
    parents = ev[ev["tags.mlflow.parentRunId"].isna()]
    assert len(parents) == 1 and (ev["status"] == "FINISHED").all()
    parent = parents["run_id"].iloc[0]
    folds = ev[ev["tags.mlflow.parentRunId"] == parent]
    assert len(folds) == 1
    trainings = ev[ev["tags.mlflow.parentRunId"] == folds["run_id"].iloc[0]]
    assert sorted(trainings["tags.stage"]) == ["classifier", "segmenter"]
    # Fold models stay out of the registry; nothing lands in the ordinary training experiments.
    assert not len(runs[runs["experiment"].isin(tracking.EXPERIMENTS.values())])
    parent_run = tracking.get_run(parent)
    assert "classifier_roc_auc_low" in parent_run["metrics"]
    patients = tracking.load_table(parent, "patients")
    assert len(patients) == 2
    text = json.dumps([tracking.get_run(r) for r in ev["run_id"]], default=str)
    text += patients.to_csv()
    assert not PATIENT_KEY.search(text), "a patient key reached MLflow"


def test_no_train_scores_given_models(evaluated: dict[str, Any], tmp_path: Path) -> None:
    fold_dir = evaluated["out"] / "fold-0"
    clf, seg = fold_dir / "classifier.keras", fold_dir / "segmenter.keras"
    assert clf.exists() and seg.exists()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        out = tmp_path / "scored"
        args = ["evaluate", str(evaluated["archive"]), "--out", str(out), "--no-train"]
        args += ["--classifier", str(clf), "--segmenter", str(seg), "--n-boot", "50"]
        args += ["--threshold", "0.5"]
        assert main(args) == 0
    result = json.loads((out / "evaluation.json").read_text())
    assert result["overall"]["patients"] == 8
    fold = result["folds"][0]
    assert fold["threshold"] == 0.5
    # The held-out gate curve recomputes triage's own routing: its 0.5 row is the run's figures.
    curve = pd.read_csv(out / "given-models" / "gate_curve.csv").set_index("threshold")
    assert curve.loc[0.5, "gate_sensitivity_slice"] == pytest.approx(fold["gate_sensitivity_slice"])
    assert curve.loc[0.5, "segmenter_calls_saved"] == pytest.approx(fold["segmenter_calls_saved"])
    assert curve["segmenter_calls_saved"].is_monotonic_decreasing  # stricter: fewer normal calls
    assert main(["evaluate", str(evaluated["archive"]), "--no-train", "--out", str(out)]) == 2


def test_resume_reuses_only_models_of_the_same_recipe(evaluated: dict[str, Any]) -> None:
    fold_dir = evaluated["out"] / "fold-0"
    recipe = json.loads((fold_dir / "classifier.recipe.json").read_text())
    assert recipe["recipe"]["split_hash"] and recipe["seconds"] > 0
    assert not PATIENT_KEY.search(json.dumps(recipe)), "a patient key in the recipe record"
    clf_bytes = (fold_dir / "classifier.keras").read_bytes()
    seg_mtime = (fold_dir / "segmenter.keras").stat().st_mtime_ns
    base = ["evaluate", str(evaluated["archive"]), "--out", str(evaluated["out"])]
    base += ["--folds", "4", "--fold", "0", "--resume"]
    changed = list(FAST)  # one segmenter option differs
    changed[changed.index("--segmenter-epochs") + 1] = "2"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{evaluated['tmp'] / 'mlflow.db'}")
        mp.setenv("MRI_TRIAGE_ARTIFACT_ROOT", str(evaluated["tmp"] / "artifacts"))
        assert main([*base, *changed]) == 0
        fold = json.loads((evaluated["out"] / "evaluation.json").read_text())["folds"][0]
        assert fold["classifier_reused"] == 1 and "segmenter_reused" not in fold
        assert fold["classifier_s"] == pytest.approx(recipe["seconds"])
        assert (fold_dir / "classifier.keras").read_bytes() == clf_bytes
        assert (fold_dir / "segmenter.keras").stat().st_mtime_ns != seg_mtime
        seg = json.loads((fold_dir / "segmenter.recipe.json").read_text())
        assert seg["recipe"]["options"]["epochs"] == 2
        assert main([*base, *changed]) == 0  # the same again: nothing to train
        fold = json.loads((evaluated["out"] / "evaluation.json").read_text())["folds"][0]
        assert fold["classifier_reused"] == 1 and fold["segmenter_reused"] == 1
        assert seg["recipe"]["resolved"]["epochs"] == 2  # every value training resolved
        # The same value from the preset instead of an explicit option: the same model, reused.
        mp.setitem(PRESETS["cpu"]["segmenter"], "epochs", 2)
        at = changed.index("--segmenter-epochs")
        assert main([*base, *changed[:at], *changed[at + 2 :]]) == 0
        fold = json.loads((evaluated["out"] / "evaluation.json").read_text())["folds"][0]
        assert fold["classifier_reused"] == 1 and fold["segmenter_reused"] == 1
        assert seg["recipe"]["resolved"]["empty_fraction"] == 0.1  # the preset's, recorded
        # A preset whose values changed since (a new version) retrains what it trained.
        mp.setitem(PRESETS["cpu"]["segmenter"], "empty_fraction", 0.25)
        assert main([*base, *changed]) == 0
        fold = json.loads((evaluated["out"] / "evaluation.json").read_text())["folds"][0]
        assert fold["classifier_reused"] == 1 and "segmenter_reused" not in fold
        seg = json.loads((fold_dir / "segmenter.recipe.json").read_text())
        assert seg["recipe"]["resolved"]["empty_fraction"] == 0.25
        # A record written before a field existed: the field at its default retrains nothing,
        # the same field set to something else retrains.
        record = fold_dir / "segmenter.recipe.json"
        seg["recipe"]["resolved"].pop("augment")
        record.write_text(json.dumps(seg))
        assert main([*base, *changed]) == 0
        fold = json.loads((evaluated["out"] / "evaluation.json").read_text())["folds"][0]
        assert fold["segmenter_reused"] == 1
        assert main([*base, *changed, "--segmenter-augment", "strong"]) == 0
        fold = json.loads((evaluated["out"] / "evaluation.json").read_text())["folds"][0]
        assert fold["classifier_reused"] == 1 and "segmenter_reused" not in fold
        seg = json.loads(record.read_text())
        assert seg["recipe"]["resolved"]["augment"] == "strong"
        split = seg["recipe"]["split_hash"]
        # Another segmenter seed: the same folds, that stage alone trained again with it.
        reseeded = ["--segmenter-augment", "strong", "--segmenter-seed", "7"]
        assert main([*base, *changed, *reseeded]) == 0
        fold = json.loads((evaluated["out"] / "evaluation.json").read_text())["folds"][0]
        assert fold["classifier_reused"] == 1 and "segmenter_reused" not in fold
        seg = json.loads(record.read_text())
        assert seg["recipe"]["resolved"]["seed"] == 7 and seg["recipe"]["split_hash"] == split
        # Another input mode for the segmenters (the three sequences, FLAIR of k-1, k, k+1 on a
        # share of the training slices): that stage alone, its preprocessing and recipe with it,
        # and triage through it.
        adaptive = ["--segmenter-input-mode", "adaptive", "--segmenter-modality-dropout", "0.25"]
        adaptive += ["--segmenter-batch", "4"]  # and another batch size
        assert main([*base, *changed, *reseeded, *adaptive]) == 0
        fold = json.loads((evaluated["out"] / "evaluation.json").read_text())["folds"][0]
        assert fold["classifier_reused"] == 1 and "segmenter_reused" not in fold
        resolved = json.loads(record.read_text())["recipe"]["resolved"]
        assert resolved["input_mode"] == "adaptive" and resolved["modality_dropout"] == 0.25
        assert resolved["batch"] == 4
        sidecar = json.loads((fold_dir / "segmenter.json").read_text())
        assert sidecar["preprocess"]["input_mode"] == "adaptive"
        # The preset's segmenters train on the fold's validation patients too (v8); turned off,
        # they train on fewer slices and choose their epoch on those patients again.
        used = "params.train_slices_used"
        before = tracking.search_runs([EXPERIMENT], status=None)
        more = ["--no-segmenter-train-on-val", "--segmenter-empty-fraction", "0.2"]
        assert main([*base, *changed, *reseeded, *adaptive, *more]) == 0
        fold = json.loads((evaluated["out"] / "evaluation.json").read_text())["folds"][0]
        assert fold["classifier_reused"] == 1 and "segmenter_reused" not in fold
        resolved = json.loads(record.read_text())["recipe"]["resolved"]
        assert resolved["train_on_val"] is False and resolved["select"] == "auto"
        assert resolved["empty_fraction"] == 0.2
        assert "val_score_in_sample" not in json.loads((fold_dir / "segmenter.json").read_text())
        runs = tracking.search_runs([EXPERIMENT], status=None)
        new = runs[~runs["run_id"].isin(before["run_id"]) & runs[used].notna()]
        old_seg = before[before["tags.stage"].eq("segmenter")]
        assert len(new) == 1 and int(new[used].iloc[0]) < int(old_seg[used].astype(int).min())
