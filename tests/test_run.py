"""`pipeline.triage.run.run_triage` without Prefect: the same run, patients one after another."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import triage_helpers as th

from pipeline.io.synthetic import write_synthetic_archive
from pipeline.triage.run import RunOptions, run_triage, serial_map


def test_run_triage_serially_without_prefect(tmp_path: Path, caplog) -> None:
    archive = write_synthetic_archive(tmp_path / "a", 2, "kaggle", seed=6, slices=4, image_size=64)
    (archive / "stray.tif").write_bytes(b"not a patient")  # a file of no patient
    clf = th.save(th.bright_classifier(), tmp_path / "c.keras", "classifier")
    seg = th.save(th.bright_segmenter(), tmp_path / "s.keras", "segmenter")
    options = RunOptions(clf, seg, threshold=0.99, track=False)
    with caplog.at_level(logging.INFO, logger="pipeline.triage.run"):
        result = run_triage(archive, tmp_path / "out", options, serial_map)
    assert result.exit_code == 1 and result.summary.patients_done == 2  # 1: the stray file
    assert result.summary.files_skipped == 1 and result.threshold_source == "--threshold"
    page = Path(result.index_html).read_text()
    assert "stray.tif" in page and "archive root" in page
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())["patients"]
    assert sorted(manifest) == ["SYN_0001", "SYN_0002"]
    assert all(e["outputs"]["report.json"] for e in manifest.values())
    assert "SYN_0001" not in caplog.text and "triaging 2 patients" in caplog.text
    again = run_triage(archive, tmp_path / "out", options, serial_map)
    assert again.summary.patients_skipped == 2
    with pytest.raises(ValueError, match="is the archive"):
        run_triage(archive, archive, options, serial_map)


@pytest.mark.parametrize("runtime", ["tf", "auto"])
def test_a_moved_champion_is_never_served_from_the_cache(
    tmp_path: Path, mlflow_uri: str, runtime: str
) -> None:
    """A long-lived worker asks for `@champion` again and again: after the alias moves, the next
    load is the new version's model (its predictions, not only its name), and back again."""
    import numpy as np

    from pipeline import tracking
    from pipeline.io.preprocess import PreprocessConfig
    from pipeline.triage.runtime import load_triage_runtime

    pre = PreprocessConfig(image_size=th.SIZE)
    for cut in (0.8, 0.7):  # two registered classifier versions
        with tracking.start_run("mri-triage-classifier", f"cut-{cut}") as run_id:
            tracking.log_keras_model(run_id, th.bright_classifier(cut=cut), "classifier", pre)
    seg = th.save(th.bright_segmenter(), tmp_path / "s.keras", "segmenter")
    client = tracking.MlflowClient()
    name, uri = "mri-triage-classifier", "models:/mri-triage-classifier@champion"
    x = np.zeros((1, th.SIZE, th.SIZE, 3), np.float32)
    x[0, 10, 10, 1] = 0.75  # brightest FLAIR pixel between the two versions' cuts

    def p_tumour(version: str) -> float:
        client.set_registered_model_alias(name, "champion", version)
        models = load_triage_runtime(uri, seg, 8, runtime=runtime, threshold=0.5)
        assert models.versions()["classifier"] == f"{name}/{version}"
        return float(models.classify(x)[0, 1])

    first, moved, back = p_tumour("1"), p_tumour("2"), p_tumour("1")
    assert first < 0.5 < moved and back == first
