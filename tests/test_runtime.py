"""OpenVINO exports and the runtime switch, for real (Keras → IR, NNCF, Prefect, MLflow SQLite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import triage_helpers as th

from pipeline.io.preprocess import PreprocessConfig
from pipeline.io.synthetic import write_synthetic_archive
from pipeline.triage import runtime

pytest.importorskip("openvino", reason="the mri-triage[openvino] extra is not installed")

from pipeline.triage.ov_export import SliceSets, convert_keras, export_model, sample_slices


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "cache"))
    runtime._cache.clear()
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("arch") / "kaggle"
    return write_synthetic_archive(root, patients=6, fmt="kaggle", seed=3, slices=8, image_size=64)


@pytest.fixture(scope="module")
def slices(archive: Path) -> SliceSets:
    return sample_slices(str(archive), PreprocessConfig(image_size=th.SIZE), 32, 24, seed=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("models")
    return {
        "clf": th.save(th.bright_classifier(), d / "bright.keras", "classifier"),
        "seg": th.save(th.bright_segmenter(), d / "seg.keras", "segmenter"),
    }


# ---------------------------------------------------------------- parity rules --------------------


@pytest.mark.parametrize(
    ("tf", "ov", "threshold", "flips"),
    [
        ((0.995, 0.5), (0.995, 0.5), 0.99, 0),
        ((0.995, 0.5), (0.985, 0.5), 0.99, 1),  # normal -> flagged
        ((0.989, 0.999), (0.991, 0.98), 0.99, 2),
        ((0.989, 0.999), (0.991, 0.98), 0.9, 0),  # both routes agree at a looser threshold
        ((np.nan,), (0.5,), 0.99, 0),  # NaN is flagged, as a low P(normal) is
    ],
)
def test_gate_flips_follow_the_routing_rule(tf, ov, threshold, flips) -> None:
    p_tumour = [tuple(1.0 - np.asarray(v)) for v in (tf, ov)]
    rec = runtime.ParityRecord("classifier", "int8", len(tf), 0.1, *p_tumour)
    assert rec.gate_flips(threshold) == flips
    assert (rec.refusal(threshold) is None) == (flips == 0)


def test_gate_flips_use_the_classifier_temperature() -> None:
    # P(tumour) 0.005 vs 0.012: both normal at 0.99 uncalibrated; T = 0.5 sharpens them apart.
    rec = runtime.ParityRecord("classifier", "int8", 1, 0.007, (0.005,), (0.012,))
    assert rec.gate_flips(0.99) == 1
    assert rec.gate_flips(0.98) == 0
    assert rec.gate_flips(0.98, temperature=0.5) == 0
    assert rec.gate_flips(0.9999, temperature=0.5) == 1


def test_classifier_record_without_per_slice_values_is_refused() -> None:
    old = {"kind": "classifier", "precision": "int8", "slices": 3, "max_abs_diff": 0.0,
           "p_normal_tf": [0.9, 0.9, 0.9], "p_normal_ov": [0.9, 0.9, 0.9]}  # fmt: skip
    rec = runtime.ParityRecord.from_dict(old)  # an older record's unknown fields are ignored
    assert "export again" in (rec.refusal(0.99) or "")


def test_segmenter_refused_below_dice() -> None:
    ok = runtime.ParityRecord("segmenter", "bf16", 10, 0.01, dice=0.995)
    bad = runtime.ParityRecord("segmenter", "int8", 10, 0.2, dice=0.95)
    assert ok.refusal(0.99) is None
    assert "0.9500 < 0.99" in (bad.refusal(0.99) or "")
    back = runtime.ParityRecord.from_dict(json.loads(json.dumps(bad.to_dict())))
    assert back == bad


def test_last_slices_run_on_the_small_batch_copy(tmp_path: Path) -> None:
    """A call's rest runs on the batch-4 copy when that pads less than one full batch: the same
    outputs as padding one batch of 16, fewer slices computed."""
    import openvino as ov

    x_in = ov.opset13.parameter([-1, 8, 8, 3], np.float32)
    double = ov.opset13.multiply(x_in, ov.opset13.constant(np.float32(2.0)))
    xml = tmp_path / "double.xml"
    ov.save_model(ov.Model([double], [x_in]), str(xml), compress_to_fp16=False)
    padded = runtime.OvPredictor(runtime.compile_ir(xml, "f32", 16), 16)
    tail = runtime.compile_ir(xml, "f32", runtime.TAIL_BATCH)
    tailed = runtime.OvPredictor(runtime.compile_ir(xml, "f32", 16), 16, tail=tail)
    rng = np.random.default_rng(0)
    for n, (computed_padded, computed_tailed) in {
        1: (16, 4),
        12: (16, 12),
        13: (16, 16),
        16: (16, 16),
        21: (32, 24),
        34: (48, 36),
    }.items():
        x = rng.random((n, 8, 8, 3), dtype=np.float32)
        before = (padded.computed, tailed.computed)
        np.testing.assert_array_equal(padded(x), 2 * x)
        np.testing.assert_array_equal(tailed(x), 2 * x)
        assert padded.computed - before[0] == computed_padded
        assert tailed.computed - before[1] == computed_tailed
    assert tailed.slices == padded.slices == 97


# ---------------------------------------------------------------- exports -------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kind"),
    [("resnet50", "classifier"), ("vgg16", "classifier"), ("resunet", "segmenter"),
     ("resunet_pp", "segmenter")],
)  # fmt: skip
def test_export_round_trip_per_family(name: str, kind: str, tmp_path: Path) -> None:
    from models.summary import build_named

    if name in ("resunet", "resunet_pp"):  # the family's graph with few channels (fast to export)
        from models.resunet import build_resunet
        from models.resunet_pp import build_resunet_pp

        build = build_resunet if name == "resunet" else build_resunet_pp
        model = build((64, 64, 3), (4, 8, 8, 16, 16))
    else:
        model = build_named(name, 64)
    path = th.save(model, tmp_path / f"{name}.keras", kind)
    x = np.random.default_rng(0).random((6, 64, 64, 3), dtype=np.float32)
    rows = export_model(path, SliceSets(x, x), ("f32",), batch=4)
    assert rows[0]["status"] == "exported" and rows[0]["refused"] is None
    if kind == "segmenter":  # nearest upsampling exported as one resize, not tiles of repeats
        import keras
        import openvino as ov

        xml = rows[0]["folder"] + "/model.xml"
        ops = [o.get_type_name() for o in ov.Core().read_model(xml).get_ops()]
        ups = sum(isinstance(layer, keras.layers.UpSampling2D) for layer in model.layers)
        assert "Tile" not in ops and sum(o.startswith("Interpolate") for o in ops) == ups > 0
    choice = runtime.choose_export(path, "f32", 0.99)
    assert choice.card is not None and choice.xml is not None
    assert choice.card.kind == kind and choice.card.preprocess.image_size == 64
    pred = runtime.OvPredictor(runtime.compile_ir(choice.xml, "f32", 4), 4)
    got = pred(x)  # 6 slices at batch 4: the last batch is padded
    want = model.predict(x, verbose=0)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_all_precisions_have_parity_and_int8_keeps_calibration(
    tiny: dict[str, str], slices: SliceSets, cache: Path
) -> None:
    rows = export_model(tiny["seg"], slices, batch=8)
    native = runtime.supported_precisions()
    by = {r["precision"]: r for r in rows}
    assert by["f32"]["dice"] == 1.0 and by["f32"]["max_abs_diff"] < 1e-4
    for p in ("bf16", "int8"):
        if p not in native:
            assert by[p]["status"] == "unsupported"
            continue
        assert 0.0 < by[p]["dice"] <= 1.0 and by[p]["max_abs_diff"] > 0
        record = json.loads((Path(by[p]["folder"]) / "export.json").read_text())
        assert record["parity"]["slices"] == len(slices.parity)
    if "int8" in native:
        cal = np.load(Path(by["int8"]["folder"]) / "calibration.npz")["x"]
        assert cal.shape == slices.calibration.shape and cal.dtype == np.uint8
    for p in native:  # each export's speed on this CPU, measured once and kept beside it
        assert by[p]["ms_per_slice"] > 0
        assert runtime.read_speed(Path(by[p]["folder"])) == pytest.approx(by[p]["ms_per_slice"])
    again = {r["precision"]: r for r in export_model(tiny["seg"], slices, batch=8)}
    assert again["f32"]["status"] == "cached"
    assert again["f32"]["ms_per_slice"] == by["f32"]["ms_per_slice"]  # not measured again


def test_auto_picks_the_fastest_export_measured_on_this_cpu(
    tiny: dict[str, str], slices: SliceSets
) -> None:
    rows = export_model(tiny["seg"], slices, batch=8)
    ok = [r for r in rows if r["status"] == "exported" and not r["refused"]]
    if len(ok) < 2:
        pytest.skip("fewer than two precisions pass parity on this CPU")
    folders = {r["precision"]: Path(r["folder"]) for r in ok}
    first = next(p for p in ("int8", "bf16", "f32") if p in folders)  # the order without speeds
    for fast in folders:  # whichever was measured fastest here is chosen
        for p, folder in folders.items():
            runtime.write_speed(folder, 0.5 if p == fast else 2.0, 8)
        assert runtime.choose_export(tiny["seg"], "auto").precision == fast
        assert runtime.choose_export(tiny["seg"], first).precision == first  # asked for: kept
    slow = next(p for p in folders if p != first)
    runtime.write_speed(folders[slow], 0.1, 8)
    other = folders[first] / runtime.SPEED_RECORD  # measured on another CPU only: not used
    other.write_text(json.dumps({"Another CPU | FP32 | 64 cores": {"ms_per_slice": 0.01}}))
    assert runtime.read_speed(folders[first]) is None
    assert runtime.choose_export(tiny["seg"], "auto").precision == first
    other.write_text("{not json")  # a damaged record counts as unmeasured
    assert runtime.read_speed(folders[first]) is None
    assert runtime.choose_export(tiny["seg"], "auto").precision == first


def test_broken_conversion_is_refused_and_tf_used(tiny: dict[str, str], slices: SliceSets) -> None:
    def broken(model: object, work: Path) -> object:  # converts a segmenter with another cut
        return convert_keras(th.bright_segmenter(cut=0.6), work)

    rows = export_model(tiny["seg"], slices, ("f32",), batch=8, converter=broken)
    assert rows[0]["refused"] and "Dice" in rows[0]["refused"]
    choice = runtime.choose_export(tiny["seg"], "auto", 0.99)
    assert choice.card is None and "refused" in (choice.reason or "")
    export_model(tiny["clf"], slices, ("f32",), batch=8)
    models = runtime.load_triage_runtime(tiny["clf"], tiny["seg"], 8, runtime="openvino")
    assert models.runtimes == {"classifier": "openvino-f32", "segmenter": "tf-float32"}
    assert any("refused" in n and "Dice" in n for n in models.notes)


def test_cached_export_reused_and_invalidated_by_new_model(
    tmp_path: Path, slices: SliceSets, tiny: dict[str, str]
) -> None:
    path = th.save(th.bright_segmenter(), tmp_path / "seg.keras", "segmenter")
    export_model(tiny["clf"], slices, ("f32",), batch=8)
    first = export_model(path, slices, ("f32",), batch=8)[0]
    before = runtime.load_triage_runtime(tiny["clf"], path, 8, runtime="openvino")
    again = export_model(path, slices, ("f32",), batch=8)[0]
    assert (first["status"], again["status"]) == ("exported", "cached")
    assert first["folder"] == again["folder"]
    record_path = Path(first["folder"]) / "export.json"
    record = json.loads(record_path.read_text())
    assert record["format"] == runtime.EXPORT_FORMAT
    record["format"] = 1  # made by an older export recipe: still served, made again by export
    record_path.write_text(json.dumps(record))
    assert runtime.choose_export(path, "f32", 0.99).xml == Path(first["folder"]) / "model.xml"
    remade = export_model(path, slices, ("f32",), batch=8)[0]
    assert remade["status"] == "exported" and remade["folder"] == first["folder"]
    assert json.loads(record_path.read_text())["format"] == runtime.EXPORT_FORMAT
    th.save(th.bright_segmenter(cut=0.7), tmp_path / "seg.keras", "segmenter")  # a new version
    newer = export_model(path, slices, ("f32",), batch=8)[0]
    assert newer["status"] == "exported" and newer["folder"] != first["folder"]
    assert runtime.choose_export(path, "f32", 0.99).xml == Path(newer["folder"]) / "model.xml"
    after = runtime.load_triage_runtime(tiny["clf"], path, 8, runtime="openvino")
    assert after is not before  # the process cache follows the file's content
    assert after.segmenter.version != before.segmenter.version
    assert after.segmenter.version.startswith("seg.keras#")


def test_registry_versions_have_their_own_exports(mlflow_uri: str, slices: SliceSets) -> None:
    from pipeline import tracking

    versions = []
    for cut in (0.8, 0.7):
        with tracking.start_run("t", "r") as rid:
            pre = PreprocessConfig(image_size=th.SIZE)
            info = tracking.log_keras_model(rid, th.bright_segmenter(cut=cut), "segmenter", pre)
        versions.append(f"models:/mri-triage-segmenter/{info['version']}")
    digests = [runtime.model_digest(v) for v in versions]
    assert digests[0][0] == "mri-triage-segmenter/1" and digests[0][1] != digests[1][1]
    row = export_model(versions[0], slices, ("f32",), batch=8)[0]
    assert row["status"] == "exported" and row["refused"] is None
    assert runtime.choose_export(versions[0], "f32").card is not None
    assert "no export" in (runtime.choose_export(versions[1], "f32").reason or "")


# ---------------------------------------------------------------- the switch ----------------------


def test_auto_falls_back_to_tf_when_openvino_is_hidden(
    tiny: dict[str, str], slices: SliceSets, monkeypatch: pytest.MonkeyPatch
) -> None:
    export_model(tiny["clf"], slices, ("f32",), batch=8)
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails
    assert not runtime.openvino_available()
    assert runtime.resolve_runtime("auto") == "tf"
    models = runtime.load_triage_runtime(tiny["clf"], tiny["seg"], 8, runtime="auto")
    assert set(models.runtimes.values()) == {"tf-float32"}


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_runtime_switch_same_routing_and_masks(
    tiny: dict[str, str], slices: SliceSets, archive: Path, tmp_path: Path
) -> None:
    from flows.triage import triage_flow

    for uri in tiny.values():
        export_model(uri, slices, ("f32", "bf16"), batch=8)
    outs = {}
    for rt in ("tf", "openvino"):
        outs[rt] = tmp_path / rt
        result = triage_flow(str(archive), str(outs[rt]), tiny["clf"], tiny["seg"], 0.99,
                             batch=8, track=False, runtime=rt)  # fmt: skip
        assert result["exit_code"] == 0
    for rep_tf in sorted(outs["tf"].glob("*/report.json")):
        a = json.loads(rep_tf.read_text())
        b = json.loads((outs["openvino"] / rep_tf.parent.name / "report.json").read_text())
        assert b["models"]["classifier"]["runtime"].startswith("openvino")
        for kind in ("classifier", "segmenter"):  # the manifest key does not depend on runtime
            assert a["models"][kind]["version"] == b["models"][kind]["version"]
        assert [s["route"] for s in a["slices"]] == [s["route"] for s in b["slices"]]
        pa = np.array([s["p_tumour"] for s in a["slices"]], float)
        pb = np.array([s["p_tumour"] for s in b["slices"]], float)
        np.testing.assert_allclose(pa, pb, atol=0.02)
        px_a = sum(s["mask_pixels"] for s in a["slices"])
        px_b = sum(s["mask_pixels"] for s in b["slices"])
        assert abs(px_a - px_b) <= 0.01 * max(px_a, 1)


@pytest.mark.slow
def test_evaluate_scores_given_models_on_the_chosen_runtime(
    tiny: dict[str, str], slices: SliceSets, archive: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    from pipeline.cli.main import main

    for uri in tiny.values():
        export_model(uri, slices, ("f32",), batch=16)
    folds = {}
    for rt in ("tf", "openvino", "auto"):
        out = tmp_path / rt
        args = ["evaluate", str(archive), "--no-train", "--classifier", tiny["clf"]]
        args += ["--segmenter", tiny["seg"], "--threshold", "0.99", "--n-boot", "20"]
        assert main([*args, "--runtime", rt, "--ov-precision", "f32", "--out", str(out)]) == 0
        folds[rt] = json.loads((out / "evaluation.json").read_text())["folds"][0]
    assert folds["tf"]["runtime_classifier"] == folds["tf"]["runtime_segmenter"] == "tf-float32"
    for rt in ("openvino", "auto"):  # auto: the verified exports, as `triage` would use them
        assert folds[rt]["runtime_classifier"] == folds[rt]["runtime_segmenter"] == "openvino-f32"
        for key in ("gate_sensitivity_slice", "segmenter_calls_saved", "tumour_patients_found"):
            assert folds[rt][key] == pytest.approx(folds["tf"][key])
        assert folds[rt]["dice_all_mean"] == pytest.approx(folds["tf"]["dice_all_mean"], abs=0.01)
    from pipeline import tracking
    from pipeline.learn.evaluate import EXPERIMENT

    runs = tracking.search_runs([EXPERIMENT], status=None)
    tags = runs[runs["tags.mlflow.parentRunId"].notna()]["tags.runtime_segmenter"]
    assert sorted(tags) == ["openvino-f32", "openvino-f32", "tf-float32"]


@pytest.mark.slow
def test_openvino_triage_never_imports_tensorflow(
    tiny: dict[str, str], slices: SliceSets, archive: Path, cache: Path, tmp_path: Path
) -> None:
    for uri in tiny.values():
        export_model(uri, slices, ("f32",), batch=8)
    code = f"""
import json, sys
from pathlib import Path
from pipeline.io.index import build_index
from pipeline.triage.inference import TriageSettings, triage_patient
from pipeline.triage.runtime import load_triage_runtime
s = TriageSettings(batch=8, runtime="openvino", ov_precision="f32")
m = s.load_models({tiny["clf"]!r}, {tiny["seg"]!r})
rows = next(iter(build_index({str(archive)!r}).table.groupby("patient")))[1]
rep = triage_patient(rows, Path({str(tmp_path)!r}), m, s)
mods = sorted(k for k in sys.modules if k.split(".")[0] in ("tensorflow", "keras"))
print(json.dumps({{"tf": mods, "runtimes": m.runtimes, "slices": len(rep["slices"])}}))
"""
    env = {**os.environ, runtime.CACHE_ENV: str(cache)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parents[1], check=True)  # fmt: skip
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tf"] == [] and out["slices"] == 8
    assert out["runtimes"] == {"classifier": "openvino-f32", "segmenter": "openvino-f32"}
    # The command line too: `mri-triage triage --runtime openvino` (a Prefect flow run).
    cli = f"""
import json, sys
from pipeline.cli.main import main
rc = main(["triage", {str(archive)!r},
          "--out", {str(tmp_path / "cli")!r}, "--classifier", {tiny["clf"]!r}, "--segmenter",
          {tiny["seg"]!r}, "--runtime", "openvino", "--ov-precision", "f32", "--batch", "8",
          "--no-mlflow"])
mods = sorted(k for k in sys.modules if k.split(".")[0] in ("tensorflow", "keras"))
print(json.dumps({{"rc": rc, "tf": mods}}))
"""
    proc = subprocess.run([sys.executable, "-c", cli], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parents[1], check=True)  # fmt: skip
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"rc": 0, "tf": []}, proc.stderr[-2000:]
    assert (tmp_path / "cli" / "summary.csv").is_file()


def test_bench_runs_on_openvino_without_a_tf_loop(
    tiny: dict[str, str], slices: SliceSets, archive: Path
) -> None:
    from pipeline.cli.bench import bench_triage

    for uri in tiny.values():
        export_model(uri, slices, ("f32",), batch=8)
    r = bench_triage(str(archive), tiny["clf"], tiny["seg"], batch=8, runtime="openvino",
                     ov_precision="f32", workers=2)  # fmt: skip
    assert r["runtimes"] == {"classifier": "openvino-f32", "segmenter": "openvino-f32"}
    assert r["slices"] == 48 and len(r["rss_mb_after_patient"]) == 6
    assert r["per_slice_loop_s"] is None  # the per-slice loop is TF's: not run here
    assert r["model_s"] > 0 and r["parity"]["segmenter"]["dice"] == 1.0
    # The run's CPU includes the models' and more (reading, writing), and its floor holds.
    assert r["cpu_s_end_to_end"] > 0 and r["cpu_s_models"] > 0
    assert r["cpu_ms_outside_models_per_slice"] >= 0 and r["ratio_floor"] >= 1.0
    # What the models computed, padding included: 8 slices a patient = one full batch each.
    assert r["computed_classifier"] == 48
    assert r["segmenter_inputs"] <= r["computed_segmenter"] < r["segmenter_inputs"] + 4 * 6 * 2
    from pipeline.cli.bench_runtimes import _padding_rows

    assert _padding_rows(r, r["segmenter_inputs"])[0][1].startswith("classifier 48 / 48 = 1.000x")


def test_cpu_budget_floor_shares_the_run_s_cpu_over_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.cli.bench import cpu_budget
    from pipeline.cli.bench_runtimes import _cpu_rows

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    # Models alone: 10 s of wall on both cores (20 s CPU); the run adds 6 s of CPU for 1000 slices.
    b = cpu_budget(26.0, 20.0, 10.0, 1000)
    assert b["cpu_ms_outside_models_per_slice"] == pytest.approx(6.0)
    assert b["cores_busy_in_models"] == pytest.approx(2.0)
    assert b["ratio_floor"] == pytest.approx(1.3)  # 26 s over 2 cores = 13 s against 10 s
    # Models on one core of two: work outside them can hide, the floor stays at 1.
    assert cpu_budget(16.0, 10.0, 10.0, 1000)["ratio_floor"] == 1.0
    rows = dict(_cpu_rows({**b, "cpu_s_end_to_end": 26.0, "cpu_s_models": 20.0}))
    assert rows["end-to-end / models floor on these cores"].startswith("1.30")
    assert rows["CPU outside the models"].startswith("6.0 ms a slice")


def test_models_alone_in_turns_run_each_configuration_on_its_own_runtime(
    tiny: dict[str, str], slices: SliceSets, archive: Path
) -> None:
    # Regression: TF's short model digest and the export key were remembered under one key, so
    # once TF had loaded a model in the process, its exports were looked up under the wrong digest
    # and every configuration of the in-turns table silently ran on TF.
    from pipeline.cli.bench_runtimes import interleaved
    from pipeline.io import manifest

    for uri in tiny.values():
        export_model(uri, slices, ("f32",), batch=8)
    manifest._remembered.clear()  # as in a fresh bench process: TF loads the models first
    kwargs = {"archive": str(archive), "classifier": tiny["clf"], "segmenter": tiny["seg"],
              "batch": 8, "precision": "float32", "threshold": 0.5, "xla": "off"}  # fmt: skip
    configs = [{"name": "tf", "runtime": "tf"},
               {"name": "ov", "runtime": "openvino", "ov_precision": "f32"}]  # fmt: skip
    r = interleaved(kwargs, configs, rounds=1)
    assert r["tf"]["runs_on"] == {"classifier": "tf-float32", "segmenter": "tf-float32"}
    assert r["ov"]["runs_on"] == {"classifier": "openvino-f32", "segmenter": "openvino-f32"}
    assert r["ov"]["slices"] == r["tf"]["slices"] == 32
    assert len(runtime.model_digest(tiny["seg"])[1]) == 64  # the export key, not the short digest


def test_bench_memory_rows_against_first_and_largest_patients(
    tiny: dict[str, str], slices: SliceSets, archive: Path
) -> None:
    from pipeline.cli.bench import bench_triage
    from pipeline.cli.bench_runtimes import config_table

    for uri in tiny.values():
        export_model(uri, slices, ("f32",), batch=8)
    kw = {"batch": 8, "runtime": "openvino", "ov_precision": "f32", "loop_slices": 0}
    whole = bench_triage(str(archive), tiny["clf"], tiny["seg"], **kw)
    big = bench_triage(str(archive), tiny["clf"], tiny["seg"], largest=True, **kw)
    few = bench_triage(str(archive), tiny["clf"], tiny["seg"], patients=2, **kw)
    assert (big["patients"], few["patients"]) == (1, 2)
    assert big["slices"] == 8 and few["slices"] == 16  # the archive's patients have 8 slices each
    whole.update(startup_to_results_s=1.0, tensorflow_imported=False)
    table = config_table("openvino-f32", whole, whole, 100.0, few, big)
    ratio = whole["rss_peak_mb"] / big["rss_peak_mb"]
    assert "| RSS peak, 6 patients / largest alone (8 slices) |" in table
    assert f"= {ratio:.3f}x |" in table and "/ first 2 alone" in table
