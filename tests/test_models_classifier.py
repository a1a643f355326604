"""Classifier input/output contract, weights from local files, the clear error without ImageNet."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from models.classifier import WeightsUnavailableError, build_classifier
from models.layers import CAFFE_BGR_MEAN, ImageNetCaffePreprocess


def test_preprocess_layer_matches_keras_preprocess_input() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((2, 8, 8, 3), dtype=np.float32)
    ours = np.asarray(ImageNetCaffePreprocess()(x))
    for module in (keras.applications.resnet50, keras.applications.vgg16):
        ref = module.preprocess_input(x * 255.0)
        np.testing.assert_allclose(ours, np.asarray(ref), atol=1e-4)
    np.testing.assert_allclose(
        ours[0, 0, 0], x[0, 0, 0, ::-1] * 255 - np.array(CAFFE_BGR_MEAN), atol=1e-4
    )


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16"])
def test_classifier_outputs_two_probabilities(backbone: str) -> None:
    model = build_classifier(backbone, (128, 128, 3), weights=None)
    x = np.random.default_rng(0).random((3, 128, 128, 3), dtype=np.float32)
    y = np.asarray(model(x, training=False))
    assert y.shape == (3, 2) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
    assert model.input_shape == (None, 128, 128, 3)


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="backbone"):
        build_classifier("resnet18", weights=None)
    with pytest.raises(ValueError, match="input_shape"):
        build_classifier("vgg16", (64, 64, 1), weights=None)
    with pytest.raises(FileNotFoundError):
        build_classifier("vgg16", (64, 64, 3), weights="/nonexistent/vgg.h5")


def _weights_differ(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return any(not np.allclose(x, y) for x, y in zip(a, b, strict=True))


def test_weights_h5_file_loads_into_backbone(tmp_path: Path) -> None:
    keras.utils.set_random_seed(1)
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(64, 64, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    source.save_weights(path)
    keras.utils.set_random_seed(2)
    fresh = build_classifier("vgg16", (64, 64, 3), weights=None).get_layer("vgg16").get_weights()
    loaded = build_classifier("vgg16", (64, 64, 3), weights=str(path)).get_layer("vgg16")
    assert _weights_differ(fresh, loaded.get_weights())
    for a, b in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_legacy_h5_file_loads_into_backbone(tmp_path: Path) -> None:
    """The format of Keras' own ImageNet `*_notop.h5` files."""
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(3)
    source = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    path = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    model = build_classifier("resnet50", (64, 64, 3), weights=path, trainable="top:3")
    inner = model.get_layer("resnet50")
    for a, b in zip(source.get_weights(), inner.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # includes the BN moving statistics


def test_wrong_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    other = keras.applications.VGG16(include_top=False, weights=None, input_shape=(64, 64, 3))
    path = tmp_path / "vgg.weights.h5"
    other.save_weights(path)
    with pytest.raises(ValueError, match="does not fit a headless resnet50"):
        build_classifier("resnet50", (64, 64, 3), weights=path)


def test_imagenet_without_network_says_how_to_supply_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras.src.backend.config as keras_config
    import keras.src.utils.file_utils as file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))  # an empty cache
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        build_classifier("vgg16", (64, 64, 3), weights="imagenet")
    message = str(info.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "models") in message and "weights=PATH" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
