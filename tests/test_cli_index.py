"""`mri-triage synth` and `mri-triage index` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli.main import main


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # exactly one JSON object, one line
    return json.loads(out)


def test_index_json_on_shared_kaggle_3m(
    kaggle_3m: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "index.csv"
    assert main(["index", str(kaggle_3m), "--json", "--csv", str(csv)]) == 0
    summary = _json(capsys)
    assert (summary["patients"], summary["slices"], summary["tumour_slices"]) == (11, 259, 93)
    assert summary["errors"] == []
    assert summary["seconds"] > 0
    table = pd.read_csv(csv)
    assert len(table) == 259 and int((table["tumour_pixels"] > 0).sum()) == 93


def test_synth_then_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "arc"
    argv = ["synth", str(out), "--patients", "4", "--seed", "1", "--slices", "5"]
    assert main([*argv, "--image-size", "32", "--format", "nifti"]) == 0
    assert "wrote 4 synthetic patients (1 tumour-free)" in capsys.readouterr().out
    assert main(["index", str(out), "--json"]) == 0
    summary = _json(capsys)
    assert (summary["patients"], summary["slices"]) == (4, 20)
    assert summary["patients_by_format"] == {"nifti": 4}
    assert 0 < summary["tumour_slices"] < 20
    # a second synth into the same folder refuses and changes nothing
    assert main([*argv, "--image-size", "32"]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_index_exit_status_2_when_something_was_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "arc"
    assert main(["synth", str(out), "--patients", "2", "--slices", "3", "--image-size", "16"]) == 0
    capsys.readouterr()
    (out / "SYN_0001" / "SYN_0001_2.tif").write_bytes(b"broken")
    assert main(["index", str(out), "--json"]) == 2
    summary = _json(capsys)
    assert summary["slices"] == 5
    assert [Path(e["path"]).name for e in summary["errors"]] == ["SYN_0001_2.tif"]
    assert "unreadable TIF" in summary["errors"][0]["reason"]
    assert main(["index", str(out)]) == 2
    text = capsys.readouterr().out
    assert "2 patients, 5 slices" in text and "skipped" in text and "SYN_0001_2.tif" in text


def test_index_of_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", str(tmp_path / "nope"), "--json"]) == 2
    summary = _json(capsys)
    assert (summary["patients"], summary["slices"], summary["tumour_slices"]) == (0, 0, 0)
    assert summary["errors"][0]["reason"] == "archive folder not found"


@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("0", "0")])
def test_the_command_turns_on_tensorflows_onednn_kernels_unless_the_user_chose(
    given: str | None, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorFlow turns its oneDNN CPU kernels on by itself only with AVX-512 VNNI/bf16/AMX; the
    command turns them on everywhere (2-3.4x faster training steps on AVX2), a user's 0 wins."""
    import os

    if given is None:
        monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    else:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", given)
    assert main(["index", str(tmp_path), "--json"]) in (0, 2)  # an empty folder: nothing to index
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == expected
