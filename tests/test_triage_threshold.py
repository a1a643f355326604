"""The triage flow takes the classifier's logged operating point and gate context, honours
--threshold and --gate-context, warns when the gate is bypassed, and applies the logged temperature
(real Prefect run, tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import triage_helpers as th

from flows.triage import triage_flow
from pipeline.io.preprocess import PreprocessConfig
from pipeline.io.synthetic import write_synthetic_archive
from pipeline.tracking import save_local_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("thr")
    archive = write_synthetic_archive(d / "arch", patients=2, fmt="kaggle", seed=4, slices=6,
                                      image_size=64)  # fmt: skip
    pre = PreprocessConfig(image_size=th.SIZE)
    # P(normal) = 0.5 everywhere; the logged operating point 0.4 calls every slice normal.
    clf = save_local_model(th.constant_classifier(0.5), d / "c.keras", "classifier", pre,
                           operating_point=0.4)  # fmt: skip
    # Temperature 0.25 sharpens P(tumour) 0.3 -> ~0.03: P(normal) ~0.97 passes a 0.9 threshold.
    hot = save_local_model(th.constant_classifier(0.7), d / "t.keras", "classifier", pre,
                           operating_point=0.9, temperature=0.25)  # fmt: skip
    seg = th.save(th.bright_segmenter(), d / "s.keras", "segmenter")
    # Flags the slices with a bright (tumour) region; its operating point looks 1 slice either side.
    ctx = save_local_model(th.bright_classifier(), d / "ctx.keras", "classifier", pre,
                           operating_point=0.5, gate_context=1)  # fmt: skip
    return {"archive": str(archive), "clf": str(clf), "hot": str(hot), "seg": seg, "d": str(d),
            "ctx": str(ctx)}  # fmt: skip


def _routes(out: Path) -> list[str]:
    routes = []
    for rep in sorted(out.glob("*/report.json")):
        routes += [s["route"] for s in json.loads(rep.read_text())["slices"]]
    return routes


def test_operating_point_is_the_default(setup: dict[str, str]) -> None:
    out = Path(setup["d"]) / "op"
    r = triage_flow(setup["archive"], str(out), setup["clf"], setup["seg"], track=False)
    assert r["threshold"] == pytest.approx(0.4)
    assert r["threshold_source"] == "classifier operating point"
    assert set(_routes(out)) == {"normal"} and not r["warnings"]


def test_explicit_threshold_wins_and_bypass_warns(setup: dict[str, str]) -> None:
    out = Path(setup["d"]) / "explicit"
    r = triage_flow(
        setup["archive"], str(out), setup["clf"], setup["seg"], threshold=0.9, track=False
    )
    assert (r["threshold"], r["threshold_source"]) == (0.9, "--threshold")
    assert set(_routes(out)) == {"segmented"}
    assert r["warnings"] and "100%" in r["warnings"][0]


def test_logged_temperature_is_applied(setup: dict[str, str]) -> None:
    out = Path(setup["d"]) / "temp"
    r = triage_flow(setup["archive"], str(out), setup["hot"], setup["seg"], track=False)
    assert r["threshold"] == pytest.approx(0.9)
    assert set(_routes(out)) == {"normal"}  # uncalibrated P(normal) 0.7 would be segmented
    rep = json.loads(next(out.glob("*/report.json")).read_text())
    assert rep["slices"][0]["p_tumour"] == pytest.approx(0.0326, abs=2e-3)


def _flags(out: Path) -> list[list[bool]]:
    reps = [json.loads(p.read_text()) for p in sorted(out.glob("*/report.json"))]
    return [[sl["route"] == "segmented" for sl in rep["slices"]] for rep in reps]


def test_logged_gate_context_flags_the_neighbours(setup: dict[str, str]) -> None:
    d = Path(setup["d"])
    alone = triage_flow(setup["archive"], str(d / "alone"), setup["ctx"], setup["seg"],
                        track=False, postprocess={"gate_context": 0})  # fmt: skip
    ctx = triage_flow(setup["archive"], str(d / "ctx"), setup["ctx"], setup["seg"], track=False)
    assert (alone["gate_context"], ctx["gate_context"]) == (0, 1)
    alone_flags, wide_flags = _flags(d / "alone"), _flags(d / "ctx")
    every = np.concatenate(alone_flags)
    assert every.any() and not every.all()  # the bright classifier alone flags some slices
    for own, wide in zip(alone_flags, wide_flags, strict=True):
        own_ = np.array(own)
        near = own_.copy()
        near[1:] |= own_[:-1]
        near[:-1] |= own_[1:]
        assert wide == near.tolist()  # with the context: those and their neighbours, no others
    assert sum(map(sum, wide_flags)) > every.sum()
