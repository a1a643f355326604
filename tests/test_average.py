"""`mri-triage average`: one segmenter file that is the mean of several, usable as any segmenter;
members that do not fit together, and outputs that would damage a member, are refused."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from triage_helpers import bright_classifier, bright_segmenter, save

from models.average import average_segmenters
from pipeline.cli.main import main
from pipeline.io.preprocess import PreprocessConfig
from pipeline.tracking import load_model, save_local_model
from pipeline.triage import runtime


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("members")
    return [
        save(bright_segmenter(cut=cut), root / name / "segmenter", "segmenter")
        for name, cut in (("a", 0.6), ("b", 0.8), ("c", 0.7))
    ]


def test_average_is_the_mean_of_the_members(members: list[str], tmp_path: Path) -> None:
    out = tmp_path / "mean.keras"
    assert main(["average", str(out), *members]) == 0
    averaged = load_model(str(out))
    assert averaged.kind == "segmenter"
    assert averaged.preprocess == load_model(members[0]).preprocess
    x = np.random.default_rng(0).random((4, 64, 64, 3), dtype=np.float32)
    each = [load_model(m).model.predict(x, verbose=0) for m in members]
    got = averaged.model.predict(x, verbose=0)
    assert got.shape == each[0].shape
    np.testing.assert_allclose(got, np.mean(each, axis=0), atol=1e-6)
    # Not a copy of one member: the three disagree on these pixels and the mean lies between.
    assert np.abs(each[0] - each[1]).max() > 0.5
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["architecture"].startswith("mean of 3") and len(sidecar["members"]) == 3


def test_members_that_do_not_fit_are_refused_and_nothing_is_written(
    members: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clf = save(bright_classifier(), tmp_path / "clf", "classifier")
    small = str(
        save_local_model(bright_segmenter(size=32), tmp_path / "small", "segmenter",
                         PreprocessConfig(image_size=32))
    )  # fmt: skip
    flair = str(
        save_local_model(bright_segmenter(), tmp_path / "flair", "segmenter",
                         PreprocessConfig(image_size=64, input_mode="flair25d"))
    )  # fmt: skip
    out = tmp_path / "mean.keras"
    cases = {
        "classifier": [members[0], clf],
        "image_size": [members[0], small],
        "input_mode": [members[0], flair],
        "at least two": [members[0]],
    }
    for why, given in cases.items():
        assert main(["average", str(out), *given]) == 2, why
        assert why in capsys.readouterr().err
        assert not out.exists() and not out.with_suffix(".json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".average-")]


def test_a_member_is_never_overwritten_and_an_output_only_with_force(
    members: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {m: (Path(m).read_bytes(), Path(m).with_suffix(".json").read_bytes()) for m in members}
    for target in (members[1], str(Path(members[1]).with_suffix(".json"))):
        assert main(["average", target, *members, "--force"]) == 2
        assert "one of the members" in capsys.readouterr().err
    for m, (model, sidecar) in before.items():
        assert Path(m).read_bytes() == model
        assert Path(m).with_suffix(".json").read_bytes() == sidecar
    out = tmp_path / "mean"  # the suffix is added
    assert main(["average", str(out), *members[:2]]) == 0
    first = (tmp_path / "mean.keras").read_bytes()
    assert main(["average", str(out), *members]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "mean.keras").read_bytes() == first
    assert main(["average", str(out), *members, "--force"]) == 0
    assert json.loads((tmp_path / "mean.json").read_text())["architecture"].startswith("mean of 3")


def test_average_rejects_members_of_other_shapes() -> None:
    with pytest.raises(ValueError, match="differ in input or output shape"):
        average_segmenters([bright_segmenter(size=64), bright_segmenter(size=32)])
    assert isinstance(average_segmenters([bright_segmenter(), bright_segmenter()]), keras.Model)


@pytest.mark.slow
def test_an_averaged_resunet_exports_to_openvino_like_any_segmenter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.resunet import build_resunet
    from pipeline.triage.ov_export import SliceSets, export_model

    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "cache"))
    runtime._cache.clear()
    paths = []
    for seed in (1, 2):  # two trainings' worth of different weights, few channels (fast)
        keras.utils.set_random_seed(seed)
        paths.append(save(build_resunet((64, 64, 3), (4, 8, 8, 16, 16)), tmp_path / f"m{seed}",
                          "segmenter"))  # fmt: skip
    out = tmp_path / "mean.keras"
    assert main(["average", str(out), *paths]) == 0
    x = np.random.default_rng(0).random((6, 64, 64, 3), dtype=np.float32)
    rows = export_model(str(out), SliceSets(x, x), ("f32",), batch=4)
    assert rows[0]["status"] == "exported" and rows[0]["refused"] is None
    choice = runtime.choose_export(str(out), "f32", 0.99)
    assert choice.card is not None and choice.xml is not None and choice.card.kind == "segmenter"
    got = runtime.OvPredictor(runtime.compile_ir(choice.xml, "f32", 4), 4)(x)
    want = np.mean([load_model(p).model.predict(x, verbose=0) for p in paths], axis=0)
    np.testing.assert_allclose(got, want, atol=2e-4)
