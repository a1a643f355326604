"""Segmenter shapes and dtypes, mixed precision, safe-mode save/load of every model, a short fit."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from models.classifier import build_classifier
from models.losses import SEGMENTATION_METRICS, bce_dice_loss, dice_coef
from models.precision import policy_scope, rebuild_with_policy
from models.resunet import build_resunet
from models.resunet_pp import build_resunet_pp

SEGMENTERS = {"resunet": build_resunet, "resunet_pp": build_resunet_pp}


def blob_slices(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` noisy slices `(n, size, size, 3)` in [0, 1] with one bright disc each, and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(0.3, 0.05, (n, size, size, 3)).astype(np.float32)
    masks = np.zeros((n, size, size, 1), np.float32)
    for i in range(n):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        r = rng.integers(size // 10, size // 5)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        masks[i, disc, 0] = 1.0
        images[i, disc] += 0.5
    return np.clip(images, 0, 1), masks


@pytest.mark.parametrize("name", sorted(SEGMENTERS))
@pytest.mark.parametrize("size", [64, 128])
def test_segmenter_shape_and_dtype(name: str, size: int) -> None:
    model = SEGMENTERS[name]((size, size, 3))
    x, _ = blob_slices(2, size, seed=size)
    y = np.asarray(model(x, training=False))
    assert y.shape == (2, size, size, 1) and y.dtype == np.float32
    assert np.all((y >= 0) & (y <= 1))


@pytest.mark.parametrize("name", sorted(SEGMENTERS))
def test_segmenter_rejects_bad_shapes(name: str) -> None:
    with pytest.raises(ValueError, match="multiples"):
        SEGMENTERS[name]((100, 100, 3))
    with pytest.raises(ValueError, match="filters"):
        SEGMENTERS[name]((64, 64, 3), filters=(16, 32))


@pytest.mark.parametrize("name", ["resunet", "resunet_pp", "vgg16"])
def test_builds_under_mixed_float16_with_float32_output(name: str) -> None:
    with policy_scope("mixed_float16"):
        if name == "vgg16":
            model = build_classifier("vgg16", (64, 64, 3), weights=None)
        else:
            model = SEGMENTERS[name]((64, 64, 3))
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    assert model.layers[1].compute_dtype == "float16"
    assert model.output.dtype == "float32"
    x, _ = blob_slices(1, 64, seed=0)
    assert model(x).dtype == "float32"


def _build(name: str, size: int) -> keras.Model:
    if name in ("resnet50", "vgg16"):
        return build_classifier(name, (size, size, 3), weights=None, trainable="top:1")
    return SEGMENTERS[name]((size, size, 3))


@pytest.mark.parametrize("name", ["resnet50", "vgg16", "resunet", "resunet_pp"])
def test_keras_round_trip_with_safe_mode(name: str, tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = _build(name, 64)
    x, _ = blob_slices(3, 64, seed=1)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(loaded(x)))
    assert [w.trainable for w in loaded.weights] == [w.trainable for w in model.weights]


def test_rebuild_with_policy_keeps_weights_and_float32_output() -> None:
    keras.utils.set_random_seed(0)
    model = build_classifier("vgg16", (64, 64, 3), weights=None, trainable="top:1")
    fast = rebuild_with_policy(model, "mixed_bfloat16")
    inner = fast.get_layer("vgg16")
    assert inner.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert fast.get_layer("vgg16_classifier_dense1").compute_dtype == "bfloat16"
    assert fast.layers[-1].compute_dtype == "float32"
    assert len(fast.trainable_weights) == len(model.trainable_weights)
    x, _ = blob_slices(4, 64, seed=2)
    y32, y16 = np.asarray(model(x)), np.asarray(fast(x))
    assert y16.dtype == np.float32
    np.testing.assert_allclose(y16, y32, atol=0.05)
    assert model.get_layer("vgg16").get_layer("block1_conv1").compute_dtype == "float32"


def test_short_fit_lowers_loss_and_compiled_model_round_trips(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    x, y = blob_slices(8, 32, seed=3)
    model = build_resunet((32, 32, 3), filters=(8, 8, 16, 16, 32))  # small, so the test is quick
    # SGD: tracing Adam's update step costs ~20 s more on this CPU, for no extra coverage here.
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    model.compile(optimizer=optimizer, loss=bce_dice_loss, metrics=SEGMENTATION_METRICS)
    history = model.fit(x, y, batch_size=4, epochs=5, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] * 0.9, losses
    assert "dice_coef" in history.history and "iou_coef" in history.history
    path = tmp_path / "fitted.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.loss is bce_dice_loss
    np.testing.assert_allclose(
        float(dice_coef(y, loaded(x))),
        float(dice_coef(y, model(x))),
        rtol=1e-6,
    )


@pytest.mark.parametrize("build", [build_resunet, build_resunet_pp])
def test_export_graph_resizes_instead_of_repeating_with_the_same_outputs(build) -> None:
    """`for_export` swaps each nearest UpSampling2D for one resize: identical outputs, the
    model's own weights (layers shared), and a model without upsampling comes back unchanged."""
    from models.layers import NearestUpsample, for_export

    model = build((32, 32, 3), (4, 8, 8, 16, 16))
    exported = for_export(model)
    ups = [layer for layer in model.layers if isinstance(layer, keras.layers.UpSampling2D)]
    swapped = [layer for layer in exported.layers if isinstance(layer, NearestUpsample)]
    assert len(swapped) == len(ups) > 0
    assert not any(isinstance(layer, keras.layers.UpSampling2D) for layer in exported.layers)
    x = np.random.default_rng(1).random((3, 32, 32, 3), dtype=np.float32)
    np.testing.assert_array_equal(exported.predict(x, verbose=0), model.predict(x, verbose=0))
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert any(layer is conv for layer in exported.layers)
    classifier = build_classifier("resnet50", (32, 32, 3), weights=None)
    assert for_export(classifier) is classifier
