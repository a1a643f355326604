"""`pipeline.triage.predictor.BatchPredictor`: bucketed batch shapes, XLA and its fallback, GPU
plan."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import triage_helpers as th

from models.precision import inference_plan, rebuild_with_policy
from pipeline.triage.predictor import BatchPredictor, batch_buckets, bucket_for


@pytest.mark.parametrize(
    ("batch", "buckets"),
    [(1, (1,)), (2, (1, 2)), (3, (1, 2, 3)), (12, (1, 2, 4, 8, 12)), (16, (1, 2, 4, 8, 16)),
     (17, (1, 2, 4, 8, 16, 17))],
)  # fmt: skip
def test_batch_buckets(batch: int, buckets: tuple[int, ...]) -> None:
    assert batch_buckets(batch) == buckets


@pytest.mark.parametrize(("n", "size"), [(1, 1), (3, 4), (4, 4), (5, 8), (9, 16), (16, 16)])
def test_bucket_for(n: int, size: int) -> None:
    assert bucket_for(n, batch_buckets(16)) == size


def test_bucket_for_and_buckets_refuse_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="largest bucket"):
        bucket_for(17, batch_buckets(16))
    with pytest.raises(ValueError, match="batch"):
        batch_buckets(0)


@pytest.mark.parametrize(
    ("precision", "xla", "gpu", "flags", "plan"),
    [
        ("auto", "auto", True, {"avx2"}, ("mixed_float16", True)),  # the GPU path
        ("auto", "auto", True, {"avx512_bf16"}, ("mixed_float16", True)),
        ("auto", "auto", False, {"avx512_bf16"}, ("mixed_bfloat16", False)),
        ("auto", "auto", False, {"avx2"}, ("float32", False)),
        ("float32", "auto", True, set(), ("float32", True)),
        ("float32", "auto", False, set(), ("float32", False)),
        ("auto", "off", True, set(), ("mixed_float16", False)),
        ("mixed_bfloat16", "on", False, set(), ("mixed_bfloat16", True)),
        ("float32", "on", False, set(), ("float32", True)),
    ],
)
def test_inference_plan(precision: str, xla: str, gpu: bool, flags: set, plan: tuple) -> None:
    assert inference_plan(precision, xla, gpu, flags) == plan


def test_inference_plan_names_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="mixed_float16"):
        inference_plan("float16", "auto", False, set())
    with pytest.raises(ValueError, match="'auto', 'on', 'off'"):
        inference_plan("auto", "yes", False, set())


class _Recorder(keras.layers.Layer):
    """Identity that records the batch size of every call (a host op: XLA cannot compile it)."""

    def __init__(self, seen: list[int], **kwargs) -> None:
        super().__init__(**kwargs)

        def record(a: np.ndarray) -> np.ndarray:  # a closure: Keras would copy a list attribute
            seen.append(int(a.shape[0]))
            return a

        self.record = record

    def call(self, x):
        y = tf.numpy_function(self.record, [x], tf.float32)
        y.set_shape(x.shape)
        return y


def _recording_model(seen: list[int]) -> keras.Model:
    inp = keras.Input((8, 8, 3))
    return keras.Model(inp, _Recorder(seen, name="recorder")(inp), name="recording")


def test_the_model_only_sees_bucket_sizes_and_padding_is_dropped() -> None:
    seen: list[int] = []
    predict = BatchPredictor(_recording_model(seen), batch=16)
    rng = np.random.default_rng(0)
    for n in (37, 3, 16, 1, 22, 0):
        x = rng.random((n, 8, 8, 3), dtype=np.float32)
        np.testing.assert_array_equal(predict(x), x)
    assert set(seen) <= set(batch_buckets(16)) and seen[:3] == [16, 16, 8]
    assert predict.slices == 37 + 3 + 16 + 1 + 22


def test_xla_failure_falls_back_with_a_clear_message(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []
    predict = BatchPredictor(_recording_model(seen), batch=4, jit=True)
    x = np.random.default_rng(1).random((6, 8, 8, 3), dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="pipeline.triage.predictor"):
        np.testing.assert_array_equal(predict(x), x)
    assert "XLA could not compile recording" in caplog.text and "without XLA" in caplog.text
    assert predict.xla is False and seen == [4, 2]  # the failed XLA attempt never ran the op


def _flair_slices(tmp_path: Path) -> np.ndarray:
    """Preprocessed slices of a synthetic archive, as triage feeds the models."""
    from pipeline.io.index import build_index
    from pipeline.io.preprocess import PreprocessConfig, patient_inputs
    from pipeline.io.slices import load_patient
    from pipeline.io.synthetic import write_synthetic_archive

    archive = write_synthetic_archive(tmp_path / "a", 3, "kaggle", seed=4, slices=16, image_size=64)
    pre = PreprocessConfig(image_size=th.SIZE)
    table = build_index(archive).table
    return np.concatenate(
        [
            patient_inputs(load_patient(rows, pre).images, pre)
            for _, rows in table.groupby("patient")
        ]
    )


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_xla_masks_match_the_plain_path(tmp_path: Path, policy: str) -> None:
    """The GPU path's code (XLA, optionally float16) run on this CPU: masks within Dice 0.99."""
    x = _flair_slices(tmp_path)
    seg = th.bright_segmenter()
    plain = BatchPredictor(seg, batch=8)(x)[..., 0] >= 0.5
    fast = BatchPredictor(rebuild_with_policy(seg, policy), batch=8, jit=True)
    masks = fast(x)[..., 0] >= 0.5
    assert fast.xla and plain.sum() > 300  # XLA did compile, and there is tumour to compare
    assert _dice(plain, masks) >= 0.99
    clf = BatchPredictor(rebuild_with_policy(th.bright_classifier(), policy), batch=8, jit=True)
    p_ref = BatchPredictor(th.bright_classifier(), batch=8)(x)
    assert clf.xla and np.abs(clf(x) - p_ref).max() < 0.02


def test_the_gpu_settings_reach_both_models_of_a_triage_run(tmp_path: Path) -> None:
    """`xla="on"` and `mixed_float16` (what `xla="auto"`, `precision="auto"` pick on a GPU) run
    through `load_triage_models` and a whole patient: both models compiled with XLA, masks within
    Dice 0.99 of the float32 path without XLA."""
    import tifffile

    from pipeline.io.index import build_index
    from pipeline.io.synthetic import write_synthetic_archive
    from pipeline.triage.inference import load_triage_models, triage_patient
    from pipeline.triage.settings import TriageSettings

    archive = write_synthetic_archive(tmp_path / "a", 1, "kaggle", seed=4, slices=12, image_size=64)
    rows = build_index(archive).table
    clf = th.save(th.bright_classifier(), tmp_path / "c.keras", "classifier")
    seg = th.save(th.bright_segmenter(), tmp_path / "s.keras", "segmenter")
    masks = {}
    for name, precision, xla in (("plain", "float32", "off"), ("gpu", "mixed_float16", "on")):
        models = load_triage_models(clf, seg, 8, precision, xla)
        settings = TriageSettings(threshold=0.99, precision=precision, runtime="tf", xla=xla)
        rep = triage_patient(rows, tmp_path / name, models, settings)
        assert rep["models"]["segmenter"]["runtime"] == f"tf-{precision}" + ("-xla" * (xla == "on"))
        files = sorted((tmp_path / name / rep["output"]).glob("*_pred.tif"))
        masks[name] = np.stack([tifffile.imread(f) > 0 for f in files])
    assert models.classify.xla and models.segment.xla  # no fallback: XLA compiled both
    assert masks["plain"].sum() > 100 and _dice(masks["plain"], masks["gpu"]) >= 0.99


@pytest.mark.parametrize("tta", [True, False])
def test_flagged_slices_are_segmented_a_batch_at_a_time_as_if_all_at_once(tta: bool) -> None:
    from types import SimpleNamespace

    from pipeline.io.preprocess import PreprocessConfig, expand_inputs
    from pipeline.triage.inference import PatientWork, _segment_flagged

    seen: list[int] = []
    inp = keras.Input((8, 8, 3))
    init = keras.initializers.RandomNormal(seed=1)
    y = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", kernel_initializer=init)(
        inp
    )
    model = keras.Model(inp, _Recorder(seen)(y))  # not mirror-symmetric: the mirror matters
    pre = PreprocessConfig(image_size=8, input_mode="flair25d")
    rng = np.random.default_rng(2)
    planes = rng.random((13, 8, 8, 1)).astype(np.float32)  # compact segmenter input, 13 slices
    flagged = rng.random(13) < 0.7
    flagged[[0, 12]] = True  # both ends: their neighbours repeat
    work = PatientWork(ps=None, x=np.zeros((13, 4, 4, 3), np.float32), xs=planes, flagged=flagged)
    models = SimpleNamespace(
        segment=BatchPredictor(model, batch=4), segmenter=SimpleNamespace(preprocess=pre)
    )
    got = _segment_flagged(work, models, tta)
    calls = list(seen)  # the predictor's calls, before the reference's own

    xs = expand_inputs(planes, "flair25d")[flagged]  # all flagged inputs at once, the long way
    want = model.predict(xs, verbose=0)
    if tta:
        want = (want + model.predict(xs[:, :, ::-1], verbose=0)[:, :, ::-1]) / 2.0
    assert got.shape == (int(flagged.sum()), 8, 8) and got.dtype == bool
    near = np.abs(want[..., 0] - 0.5) < 1e-5  # where rounding may tip the 0.5 cut either way
    np.testing.assert_array_equal(got[~near], want[..., 0][~near] >= 0.5)
    assert 0 < got.sum() < got.size  # the comparison is not vacuous
    inputs = int(flagged.sum()) * (2 if tta else 1)
    assert sum(calls) >= inputs and max(calls) == 4  # never more than one batch at a time
    assert len(calls) == -(-inputs // 4)  # and no more calls than all at once would need
