"""Fold assignment, temperature scaling, 3-D post-processing, threshold resolution, recipes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.io.splits import assign_folds, fold_splits, tumour_patient_set
from pipeline.learn.recipes import PRESETS, preset_values
from pipeline.triage import metrics, postprocess
from pipeline.triage.calibration import apply_temperature, fit_temperature
from pipeline.triage.postprocess import remove_isolated_3d
from pipeline.triage.rule import DEFAULT_THRESHOLD, bypass_warning, resolve_threshold


def _table(n_patients: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_patients):
        burden = 0.0 if i % 6 == 0 else rng.uniform(0.1, 0.7)
        for k in range(20):
            rows.append(
                {
                    "patient": f"P{i:03d}",
                    "slice": k + 1,
                    "has_mask": True,
                    "tumour_pixels": int(rng.random() < burden) * 50,
                }
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("n", "k"), [(70, 5), (23, 5), (10, 3), (5, 5)])
def test_folds_partition_patients_reproducibly(n: int, k: int) -> None:
    table = _table(n)
    a = assign_folds(table, k, seed=3)
    assert a == assign_folds(table, k, seed=3)
    assert set(a) == set(table["patient"])  # every patient in exactly one fold
    sizes = np.bincount(list(a.values()), minlength=k)
    assert sizes.max() - sizes.min() <= 1
    assert a != assign_folds(table, k, seed=4) or n == k
    tumour = tumour_patient_set(table)
    for fold in range(k):
        if n - sizes[fold] < 2:
            continue
        s = fold_splits(a, fold, seed=3, tumour_patients=tumour)
        assert set(s["test"]) == {p for p, f in a.items() if f == fold}
        members = s["train"] + s["val"] + s["test"]
        assert len(members) == len(set(members)) == n  # no patient shared between splits
        if tumour - set(s["test"]):
            assert set(s["val"]) & tumour  # validation can measure sensitivity


def test_folds_stratify_tumour_burden() -> None:
    table = _table(70)
    a = assign_folds(table, 5, seed=0)
    burden = (table["tumour_pixels"] > 0).groupby(table["patient"]).mean()
    per_fold = [np.mean([burden[p] for p, f in a.items() if f == k]) for k in range(5)]
    assert max(per_fold) - min(per_fold) < 0.1


def test_fold_errors_name_allowed_values() -> None:
    with pytest.raises(ValueError, match="folds must be >= 2"):
        assign_folds(_table(5), 1)
    with pytest.raises(ValueError, match="at least 5 patients"):
        assign_folds(_table(3), 5)
    with pytest.raises(ValueError, match="fold must be one of"):
        fold_splits(assign_folds(_table(10), 5), 7)


def test_temperature_scaling_lowers_ece_on_overconfident_scores() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    true_p = np.where(y == 1, rng.beta(5, 2, y.size), rng.beta(2, 5, y.size))
    # Overconfident: logits multiplied by 4 (T = 4 undoes it).
    z = np.log(true_p) - np.log1p(-true_p)
    over = 1 / (1 + np.exp(-4 * z))
    y = (rng.random(y.size) < true_p).astype(int)  # labels drawn from the true probabilities
    t = fit_temperature(y, over)
    assert 3.0 < t < 5.5
    calibrated = apply_temperature(over, t)
    before = metrics.expected_calibration_error(y, over)
    after = metrics.expected_calibration_error(y, calibrated)
    assert after < before / 2
    assert metrics.roc_auc(y, calibrated) == pytest.approx(
        metrics.roc_auc(y, over), abs=1e-5
    )  # float32 ties


def test_temperature_edge_cases() -> None:
    assert fit_temperature([1, 1, 1], [0.9, 0.8, 0.7]) == 1.0  # one class: nothing to fit
    assert fit_temperature([], []) == 1.0
    p = np.array([0.2, np.nan, 0.9])
    out = apply_temperature(p, 2.0)
    assert np.isnan(out[1]) and 0.2 < out[0] < 0.5 and 0.5 < out[2] < 0.9
    np.testing.assert_allclose(apply_temperature(p[[0, 2]], 1.0), p[[0, 2]], rtol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(p, 0.0)


def test_3d_postprocessing_on_hand_made_masks() -> None:
    m = np.zeros((6, 40, 40), bool)
    m[1:4, 10:20, 10:20] = True  # a tumour over three slices: kept
    m[5, 30:33, 30:33] = True  # a 9-px blob on one slice: dropped
    m[0, 0:20, 30:40] = True  # 200 px on one slice: kept at lone_slice_area 150
    m[3, 35:38, 0:3] = True  # 9 px, next to nothing in 3-D: dropped
    out = remove_isolated_3d(m, lone_slice_area=150, min_volume=50)
    assert out[1:4, 10:20, 10:20].all()
    assert not out[5].any() and not out[3, 35:38, 0:3].any()
    assert out[0, 0:20, 30:40].all()
    assert not (out & ~m).any()  # a subset of the input
    # A blob touching the tumour diagonally on the next slice belongs to it (26-connected).
    m2 = np.zeros((3, 10, 10), bool)
    m2[0, 2:6, 2:6] = True
    m2[1, 6, 6] = True
    kept = remove_isolated_3d(m2, lone_slice_area=100, min_volume=0)
    assert kept[1, 6, 6] and kept[0, 2:6, 2:6].all()  # spans two slices: not a lone blob
    np.testing.assert_array_equal(remove_isolated_3d(m, 0, 0), m)
    with pytest.raises(ValueError):
        remove_isolated_3d(m[0], 10, 10)


def test_resolve_threshold_and_bypass_warning() -> None:
    assert resolve_threshold(0.5, {"operating_point": 0.7}) == (0.5, "--threshold")
    thr, source = resolve_threshold(None, {"operating_point": 0.7})
    assert thr == 0.7 and "operating point" in source
    assert resolve_threshold(None, {"operating_point": 1.3})[0] == 1.0
    thr, source = resolve_threshold(None, {})
    assert thr == DEFAULT_THRESHOLD and source.startswith("default")
    assert resolve_threshold(None, {"operating_point": None})[0] == DEFAULT_THRESHOLD
    with pytest.raises(ValueError):
        resolve_threshold(1.5, None)
    assert bypass_warning(95, 100) and "95%" in bypass_warning(95, 100)  # type: ignore[operator]
    assert bypass_warning(90, 100) is None and bypass_warning(0, 0) is None


def _isolated_whole_volume(m: np.ndarray, lone: int, vol: int) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(m, structure=np.ones((3, 3, 3), dtype=bool))
    out = m.copy()
    for i in range(1, count + 1):
        comp = labels == i
        one_slice = comp.any(axis=(1, 2)).sum() == 1
        if comp.sum() < vol or (one_slice and comp.sum() < lone):
            out[comp] = False
    return out


@pytest.mark.parametrize("seed", range(4))
def test_isolated_3d_on_the_masks_box_equals_the_whole_volume(seed: int) -> None:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    m = ndimage.binary_dilation(rng.random((8, 40, 36)) > 0.996, iterations=int(rng.integers(1, 3)))
    m[-1, -2:, :3] = True  # touching the faces of the volume
    got = postprocess.remove_isolated_3d(m, lone_slice_area=12, min_volume=20)
    np.testing.assert_array_equal(got, _isolated_whole_volume(m, 12, 20))
    with pytest.raises(ValueError, match="empty"):
        postprocess.bounding_box(np.zeros((2, 3, 3), bool))


def _hd95_whole_volume(t: np.ndarray, p: np.ndarray, sp: tuple[float, ...]) -> float:
    """The textbook definition: distance transforms of the whole array (`metrics.hd95` crops to
    the masks' box and queries a k-d tree between the surfaces instead, for speed)."""
    from scipy import ndimage

    st = t & ~ndimage.binary_erosion(t, border_value=0)
    spr = p & ~ndimage.binary_erosion(p, border_value=0)
    d_to_t = ndimage.distance_transform_edt(~st, sampling=sp)
    d_to_p = ndimage.distance_transform_edt(~spr, sampling=sp)
    return float(np.percentile(np.concatenate([d_to_t[spr], d_to_p[st]]), 95))


@pytest.mark.parametrize("seed", range(10))
def test_hd95_equals_distance_transforms_of_the_whole_volume(seed: int) -> None:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (9, 48, 40)
    t = ndimage.binary_dilation(rng.random(shape) > 0.995, iterations=2)
    p = ndimage.binary_dilation(rng.random(shape) > 0.997, iterations=int(rng.integers(1, 4)))
    if seed % 4 == 0:  # a prediction sharing most of the truth's surface (the usual case)
        p = t.copy()
        p[: shape[0] // 2] = ndimage.binary_dilation(t[: shape[0] // 2])
    if seed % 2:  # masks touching the volume's faces, where the crop meets the array's edge
        t[:, 0, :5] = True
        p[-1, -3:, -1] = True
    # Pixels, thick square-pixel slices (per-slice 2-D transforms), non-square pixels (k-d tree).
    sp = [(1.0, 1.0, 1.0), (3.0, 0.7, 0.7), (2.5, 0.9, 1.1)][seed % 3]
    assert metrics.hd95(t, p, sp) == pytest.approx(_hd95_whole_volume(t, p, sp), abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_hd95_two_nearest_surface_searches_agree(seed: int) -> None:
    """The per-slice 2-D transforms (square pixels) give the k-d tree's distances exactly."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 12)), int(rng.integers(4, 60)), int(rng.integers(4, 60)))
    surface = ndimage.binary_dilation(rng.random(shape) > 0.98) & (rng.random(shape) > 0.5)
    surface.flat[0] = True  # never empty
    others = rng.random(shape) > 0.7
    sp = np.array([float(rng.uniform(0.5, 6.0)), 0.8, 0.8])
    got = metrics._nearest_by_planes(surface, others, sp)
    want = metrics._nearest_by_tree(surface, others, sp)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert len(got) == int(others.sum())
    assert len(metrics._nearest_by_planes(surface, np.zeros(shape, bool), sp)) == 0


def test_hd95_and_bootstrap() -> None:
    a = np.zeros((3, 20, 20), bool)
    a[1, 5:10, 5:10] = True
    b = np.roll(a, 3, axis=2)
    assert metrics.hd95(a, a) == 0.0
    assert metrics.hd95(a, b) == pytest.approx(3.0)
    assert metrics.hd95(a, b, (1.0, 1.0, 0.5)) == pytest.approx(1.5)
    assert np.isnan(metrics.hd95(a, np.zeros_like(a)))
    assert metrics.hd95(np.zeros_like(a), np.zeros_like(a)) == 0.0
    lo, hi = metrics.bootstrap_ci(list(range(100)), np.mean, n_boot=500)
    assert lo < 49.5 < hi and hi - lo < 25
    assert all(np.isnan(metrics.bootstrap_ci([], np.mean)))


def test_presets_and_precedence() -> None:
    from pipeline.learn.training import TrainConfig

    assert set(PRESETS) == {"paper", "cpu", "gpu"}
    cpu = TrainConfig.create("classifier", "x", "resnet50", preset="cpu", weights="none")
    assert (cpu.image_size, cpu.lr, cpu.input_mode, cpu.schedule) == (
        64,
        5e-4,
        "flair25d",
        "cosine",
    )
    assert (cpu.pretrain_epochs, cpu.pretrain_lr) == (5, 1e-3)  # the encoder learns the masks first
    assert cpu.preprocess.normalize == "volume" and cpu.preset == "cpu"
    assert (cpu.gate_context, cpu.min_sensitivity) == (1, 0.99)  # the gate looks along z
    plain = TrainConfig.create("classifier", "x", "resnet50", weights="none")
    assert (plain.gate_context, plain.min_sensitivity) == (0, 0.98)  # no preset: slice alone
    # The calls-saved share spent on sensitivity (rule B): the presets' 0.45; none without one;
    # an explicit 0 turns it off; a share outside [0, 1] is refused before any training.
    assert (cpu.min_saved, plain.min_saved) == (0.45, None)
    zero = TrainConfig.create("classifier", "x", "resnet50", preset="cpu", min_saved=0.0)
    assert zero.min_saved == 0.0
    with pytest.raises(ValueError, match="min_saved"):
        TrainConfig.create("classifier", "x", "resnet50", preset="cpu", min_saved=1.5)
    with pytest.raises(ValueError, match="gate_context is the classifier's"):
        TrainConfig.create("segmenter", "x", "resunet", gate_context=1)
    mine = TrainConfig.create(
        "classifier", "x", "resnet50", preset="cpu", weights="none", image_size=96, lr=2e-4
    )
    assert (mine.image_size, mine.lr, mine.epochs) == (96, 2e-4, 12)  # explicit beats preset
    off = TrainConfig.create("classifier", "x", "resnet50", preset="cpu", pretrain_epochs=0)
    assert off.pretrain_epochs == 0  # an explicit 0 turns the preset's pre-training off
    pre = preset_values("cpu", "classifier", pretrained=True)
    assert pre["lr"] == 1e-4 and "pretrain_epochs" not in pre  # from ImageNet: fine-tuning only
    paper = TrainConfig.create("segmenter", "x", "resunet", preset="paper")
    assert (paper.image_size, paper.lr, paper.input_mode) == (256, 1e-5, "rgb")
    seg = TrainConfig.create("segmenter", "x", "resunet", preset="cpu")
    assert seg.empty_fraction == 0.1 and seg.train_on_val and seg.select == "last"  # v8
    with pytest.raises(ValueError, match="preset must be one of"):
        TrainConfig.create("segmenter", "x", "resunet", preset="fast")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig.create("segmenter", "x", "resunet", optimizer="sgd")
    with pytest.raises(ValueError, match="input_mode must be one of"):
        TrainConfig.create("segmenter", "x", "resunet", input_mode="t2")


def test_classifier_card_names_its_gate_context() -> None:
    from pipeline import tracking_meta

    info = {"operating_point": 0.332, "min_sensitivity": 0.99, "gate_context": 2}
    card = tracking_meta.model_card("classifier", info, {}, {"roc_auc": 0.95}, {})
    assert "P(normal) on it and the 2 slice(s) either side >= 0.332" in card
    alone = tracking_meta.model_card("classifier", {"operating_point": 0.9}, {}, {}, {})
    assert "when P(normal) >= 0.9" in alone


def test_truth_metrics_count_labelled_slices_only_and_masks_are_not_copied() -> None:
    from scipy import ndimage

    from pipeline.triage.inference import _gt_metrics

    rng = np.random.default_rng(3)
    gt = ndimage.binary_dilation(rng.random((12, 32, 32)) > 0.99, iterations=2)
    pred = ndimage.binary_dilation(rng.random((12, 32, 32)) > 0.99, iterations=2)
    flagged = rng.random(12) > 0.3
    usable = np.ones(12, bool)
    usable[[2, 7]] = False
    part = _gt_metrics(gt, usable, flagged, pred)
    same = _gt_metrics(gt[usable], np.ones(10, bool), flagged[usable], pred[usable])
    assert part == same and part.dice is not None
    both = metrics.per_patient(gt[usable], pred[usable], ["p"] * 10)["p"]
    assert part.recall == pytest.approx(both["recall"])
    assert part.precision == pytest.approx(both["precision"])
    empty = _gt_metrics(np.zeros((3, 8, 8), bool), np.ones(3, bool), np.ones(3, bool),
                        np.zeros((3, 8, 8), bool))  # fmt: skip
    assert empty.dice == 1.0 and empty.recall is None and empty.precision is None
    assert metrics.as_bool(gt) is gt  # bool masks pass through uncopied
    assert metrics.as_bool(np.array([0.0, 0.4, -1.0])).tolist() == [False, True, True]


def test_gate_curve_counts_what_each_threshold_would_route() -> None:
    from pipeline.learn.evaluate import PatientEval, gate_curve

    def patient(labels: list[int], p_tumour: list[float]) -> PatientEval:
        y, p = np.array(labels), np.array(p_tumour, float)
        nan = float("nan")
        return PatientEval(0, "x", y, p, np.ones(len(y), bool), nan, nan, nan, None)

    a = patient([0, 0, 1, 1, 0], [0.05, 0.10, 0.60, 0.30, 0.02])  # P(normal) .95 .9 .4 .7 .98
    b = patient([0, 1, 0], [0.20, 0.15, float("nan")])  # P(normal) .8 .85 NaN
    curve = gate_curve([a, b], reach=0, thresholds=(0.5, 0.8, 0.9)).set_index("threshold")
    # 0.5: normal = .95 .9 .7 .98 | .8 .85 -> tumour slices kept: the .4 one only (1 of 3).
    assert curve.loc[0.5, "gate_sensitivity_slice"] == pytest.approx(1 / 3)
    assert curve.loc[0.5, "segmenter_calls_saved"] == pytest.approx(6 / 8)
    assert curve.loc[0.5, "tumour_patients_lost"] == 1  # b's one tumour slice dropped
    assert curve.loc[0.5, "gate_sensitivity_patient"] == pytest.approx(0.5)
    # 0.9: normal = .95 .9 .98 only; the NaN slice is always segmented.
    assert curve.loc[0.9, "gate_sensitivity_slice"] == 1.0
    assert curve.loc[0.9, "segmenter_calls_saved"] == pytest.approx(3 / 8)
    assert curve.loc[0.9, "tumour_patients_lost"] == 0
    # A z context of 1 routes on each neighbourhood's least P(normal): a's .7 slice sits next to
    # the .4 one and b's tumour slice next to the failed one, so at 0.5 all three are segmented.
    ctx = gate_curve([a, b], reach=1, thresholds=(0.5,)).set_index("threshold")
    assert ctx.loc[0.5, "gate_sensitivity_slice"] == 1.0
    assert ctx.loc[0.5, "segmenter_calls_saved"] == pytest.approx(3 / 8)  # windows .9 .7 | .8


def test_ema_validates_selects_and_keeps_the_averaged_weights(monkeypatch) -> None:
    """`ema` > 0: the run ends on the moving average (a slow one barely leaves the start), its
    validation loss is the average's, and a momentum outside [0, 1) is refused before training."""
    import keras

    from pipeline.learn import recipe_fit
    from pipeline.learn.training import TrainConfig

    with pytest.raises(ValueError, match="ema must be a momentum"):
        TrainConfig.create("segmenter", "x", "resunet", ema=1.0)
    monkeypatch.setattr(recipe_fit, "_epoch_logger", lambda run_id: keras.callbacks.Callback())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0], dtype="float32"))[:, None]

    def run(ema: float) -> tuple[np.ndarray, keras.Model, dict]:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        config = TrainConfig.create(
            "segmenter", "x", "resunet", epochs=4, lr=0.1, patience=10, ema=ema
        )
        model.compile(optimizer=recipe_fit.make_optimizer(config, 8), loss="mse")
        start = model.get_weights()[0].copy()
        fitted = recipe_fit.fit(model, x, (x, y), config, "", y=y, batch_size=8)
        return start, model, fitted

    start, raw, _ = run(0.0)
    start_avg, averaged, fitted = run(0.999)
    np.testing.assert_array_equal(start, start_avg)  # same seed, same start
    moved_raw = float(np.linalg.norm(raw.get_weights()[0] - start))
    moved_avg = float(np.linalg.norm(averaged.get_weights()[0] - start))
    assert moved_raw > 1.0  # the raw weights learnt the map
    # 32 steps at momentum 0.999 keep ~97% of the start in the average: it barely moved.
    assert moved_avg < 0.1 * moved_raw
    # The kept model is the best epoch's average, and the logged validation loss is its own.
    best = fitted["best_epoch"] - 1
    own = float(averaged.evaluate(x, y, verbose=0))
    assert fitted["history"]["val_loss"][best] == pytest.approx(own, rel=1e-4)
    assert own > 5 * float(raw.evaluate(x, y, verbose=0))  # not the raw weights' loss


def test_select_last_keeps_the_last_epoch_and_train_on_val_needs_it(monkeypatch) -> None:
    """`select="last"`: no early stopping and no checkpoint, the last epoch's weights are kept even
    where validation got worse; `train_on_val` (segmenter only) implies it and refuses any other
    selection, since its validation figures are in-sample."""
    import keras

    from pipeline.learn import recipe_fit
    from pipeline.learn.recipes import PRESETS
    from pipeline.learn.training import TrainConfig

    tov = TrainConfig.create("segmenter", "x", "resunet", preset="cpu", train_on_val=True)
    assert tov.select == "last" and tov.train_on_val
    # The cpu preset trains on the validation patients (v8), its select "auto" giving way to
    # "last"; an explicit train_on_val=False keeps the held-out choice.
    assert PRESETS["cpu"]["segmenter"]["train_on_val"] is True
    assert TrainConfig.create("segmenter", "x", "resunet", preset="cpu").select == "last"
    off = TrainConfig.create("segmenter", "x", "resunet", preset="cpu", train_on_val=False)
    assert off.select == "auto" and not off.train_on_val
    with pytest.raises(ValueError, match="select must be 'last'"):
        TrainConfig.create("segmenter", "x", "resunet", train_on_val=True, select="auto")
    with pytest.raises(ValueError, match="calibrate"):
        TrainConfig.create("classifier", "x", "resnet50", train_on_val=True)
    monkeypatch.setattr(recipe_fit, "_epoch_logger", lambda run_id: keras.callbacks.Callback())
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0], dtype="float32"))[:, None]

    def run(select: str) -> tuple[keras.Model, dict]:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        config = TrainConfig.create(
            "segmenter", "x", "resunet", epochs=6, lr=0.05, patience=1, select=select
        )
        model.compile(optimizer=recipe_fit.make_optimizer(config, 8), loss="mse")
        # Validation wants the opposite map: it gets worse every epoch training gets better.
        fitted = recipe_fit.fit(model, x, (x, -y), config, "", y=y, batch_size=8)
        return model, fitted

    by_loss, stopped = run("val_loss")
    last, kept = run("last")
    assert len(kept["history"]["loss"]) == 6 and kept["best_epoch"] == 6
    assert len(stopped["history"]["loss"]) < 6  # early stopping ended the other one
    # The kept weights are the last epoch's: their validation loss is the last one logged.
    own = float(last.evaluate(x, -y, verbose=0))
    assert kept["history"]["val_loss"][-1] == pytest.approx(own, rel=1e-4)
    assert own > float(by_loss.evaluate(x, -y, verbose=0))


def test_format_table_names_given_models_and_shows_recall_and_precision() -> None:
    from pipeline.learn.evaluate import TABLE_COLUMNS, format_table

    figures = {k: 0.5 for k, _ in TABLE_COLUMNS}
    row = {"fold": -1, "patients": 2, "threshold": 0.8, "gate_context": 1, **figures}
    overall = {"patients": 2, **figures}
    overall.update({f"{k}_{end}": 0.25 for k, _ in TABLE_COLUMNS for end in ("low", "high")})
    lines = format_table({"folds": [row], "overall": overall}).splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[-4:-2] == ["recall", "precision"]
    assert lines[2].startswith("| given models | 2 | 0.500 |") and "0.8 ±1" in lines[2]
    assert lines[3].startswith("| all | 2 | 0.500 [0.250, 0.250] |")
