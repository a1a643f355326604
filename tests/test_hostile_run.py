"""A run that cannot start says so in one line (exit 2) before touching anything; a run that is
killed resumes; a model or output that changed is never taken for a finished patient; MLflow only
gets the run's own outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest
import triage_helpers as th
from hostile_corpus import snapshot

from flows.triage import triage_flow
from pipeline.cli import main as cli
from pipeline.io.manifest import JOURNAL_NAME, MANIFEST_NAME, load_manifest
from pipeline.io.safety import UnsafeOutputError
from pipeline.io.synthetic import write_synthetic_archive
from pipeline.triage.preflight import check_run_paths

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("models")
    wrong = keras.Sequential([keras.Input((th.SIZE, th.SIZE, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])  # fmt: skip
    logits = keras.Sequential([keras.Input((th.SIZE, th.SIZE, 3)), keras.layers.Flatten(),
                               keras.layers.Dense(2, bias_initializer="ones")])  # fmt: skip
    return {
        "clf": th.save(th.bright_classifier(), d / "c.keras", "classifier"),
        "seg": th.save(th.bright_segmenter(), d / "s.keras", "segmenter"),
        "wrong_shape": th.save(wrong, d / "wrong.keras", "classifier"),
        "logits": th.save(logits, d / "logits.keras", "classifier"),
        "seg_size": th.save(th.bright_segmenter(), d / "s32.keras", "segmenter", size=32),
    }


@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    return write_synthetic_archive(tmp_path / "arch", 3, "kaggle", seed=2, slices=4, image_size=64)


def _cli(archive: Path, out: Path, models: dict, *extra: str, clf: str = "clf", seg: str = "seg"):
    argv = ["triage", str(archive), "--out", str(out), "--classifier", models[clf],
            "--segmenter", models[seg], "--no-mlflow", *extra]  # fmt: skip
    return cli.main(argv)


OVERLAPS = {
    "equal": lambda a: a,
    "inside": lambda a: a / "results",
    "a patient folder": lambda a: a / "SYN_0001",
    "inside a patient": lambda a: a / "SYN_0001" / "out",
    "containing": lambda a: a.parent,
    "link to the archive": lambda a: a.parent / "link",
    "inside a link to it": lambda a: a.parent / "link" / "x",
}


@pytest.mark.parametrize("how", sorted(OVERLAPS))
def test_out_overlapping_the_archive_is_refused(archive: Path, how: str) -> None:
    (archive.parent / "link").symlink_to(archive)
    with pytest.raises(UnsafeOutputError, match="--out"):
        check_run_paths(archive, OVERLAPS[how](archive))


@pytest.mark.parametrize("how", ["equal", "inside a patient", "link to the archive"])
def test_cli_refuses_overlap_before_writing(archive, models, how, capsys) -> None:
    (archive.parent / "link").symlink_to(archive)
    before = snapshot(archive.parent)
    assert _cli(archive, OVERLAPS[how](archive), models) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out") and "\n" not in err
    assert snapshot(archive.parent) == before  # nothing written, nothing removed


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("out is a file", "not a folder"),
        ("parent is a file", "not writable"),
        ("summary.csv is a folder", "not a file this tool wrote"),
        ("manifest is a link", "not a file this tool wrote"),
        ("journal is a link", "not a file this tool wrote"),
        ("unreachable dask", "cannot reach the Dask scheduler"),
        ("malformed dask", "not tcp://host:port"),
        ("wrong output shape", "output shape"),
        ("logits", "not probabilities"),
        ("sidecar size", "config says 32 px"),
        ("segmenter as classifier", "classifier"),
    ],
)
def test_cannot_run_is_one_line_and_exit_2(archive, models, tmp_path, case, needle, capsys):
    out, extra, clf, seg = tmp_path / "out", [], "clf", "seg"
    (tmp_path / "afile").write_text("x")
    if case == "out is a file":
        out = tmp_path / "afile"
    elif case == "parent is a file":
        out = tmp_path / "afile" / "out"
    elif case == "summary.csv is a folder":  # e.g. a patient folder of an older version
        (out / "summary.csv").mkdir(parents=True)
    elif case == "manifest is a link":
        out.mkdir()
        (out / "manifest.json").symlink_to(archive / "SYN_0001" / "SYN_0001_1.tif")
    elif case == "journal is a link":  # appending through it would write into the archive
        out.mkdir()
        (out / JOURNAL_NAME).symlink_to(archive / "SYN_0001" / "SYN_0001_1.tif")
    elif case == "unreachable dask":
        extra = ["--dask-address", "tcp://127.0.0.1:9"]
    elif case == "malformed dask":
        extra = ["--dask-address", "my-cluster"]
    else:
        clf, seg = {"wrong output shape": ("wrong_shape", "seg"), "logits": ("logits", "seg"),
                    "sidecar size": ("clf", "seg_size"),
                    "segmenter as classifier": ("seg", "seg")}[case]  # fmt: skip
    before, out_before = snapshot(archive), snapshot(out) if out.is_dir() else None
    assert _cli(archive, out, models, *extra, clf=clf, seg=seg) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err, err
    assert snapshot(archive) == before
    if out_before is not None:
        assert snapshot(out) == out_before
    else:  # paths, Dask and models are all checked before anything is written
        assert not out.is_dir()


def test_changed_model_or_output_is_redone(archive, models, tmp_path) -> None:
    out, clf = tmp_path / "out", str(tmp_path / "clf.keras")
    th.save(th.bright_classifier(), Path(clf), "classifier")
    run = lambda: triage_flow(str(archive), str(out), clf, models["seg"], 0.99, track=False)  # noqa: E731
    assert run()["metrics"]["patients_done"] == 3
    assert run()["metrics"]["patients_skipped"] == 3
    report = next(out.glob("*/report.json"))
    report.write_text(report.read_text().replace('"done"', '"done" '))  # an output edited
    again = run()["metrics"]
    assert again["patients_done"] == 1 and again["patients_skipped"] == 2
    th.save(th.bright_classifier(cut=0.7), Path(clf), "classifier")  # same path, new weights
    assert run()["metrics"]["patients_done"] == 3


def test_mlflow_gets_only_the_runs_own_outputs(archive, models, tmp_path, mlflow_uri) -> None:
    from pipeline.tracking import list_artifacts

    out = tmp_path / "out"
    (out / "private").mkdir(parents=True)
    (out / "private" / "other_scan.tif").write_bytes(b"not ours")
    (out / "my_notes.txt").write_text("not ours")
    result = triage_flow(
        str(archive), str(out), models["clf"], models["seg"], 0.99, track=True, log_outputs=True
    )
    names = " ".join(list_artifacts(result["run_id"], "triage"))
    assert "summary.csv" in names and "SYN_0001" in names
    assert "my_notes" not in names and "private" not in names


def test_killed_run_resumes(tmp_path: Path, models: dict) -> None:
    archive = write_synthetic_archive(tmp_path / "arch", 10, "kaggle", seed=5, slices=16,
                                      image_size=128)  # fmt: skip
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline.cli", "triage", str(archive), "--out", str(out),
           "--classifier", models["clf"], "--segmenter", models["seg"], "--no-mlflow",
           "--workers", "1"]  # fmt: skip
    # Its own process group, killed whole: the run and the temporary Prefect server it started
    # (killing the run alone left that server running after the tests, one per test run).
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (out / JOURNAL_NAME).exists() and proc.poll() is None:  # a patient finished
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = set(load_manifest(out))
    result = triage_flow(str(archive), str(out), models["clf"], models["seg"], 0.99, track=False)
    m = result["metrics"]
    assert result["exit_code"] == 0 and m["patients"] == 10
    assert m["patients_skipped"] == len(finished) and m["patients_done"] == 10 - len(finished)
    assert not list((out / ".staging").iterdir())
    manifest = json.loads((out / MANIFEST_NAME).read_text())["patients"]
    assert len(manifest) == 10 and all(e["outputs"] for e in manifest.values())
    print(f"killed after {len(finished)} of 10 patients; resumed the other {10 - len(finished)}")
