"""Parameter counts at 256x256x3 (the paper's Table 3), GFLOPs from the layer graph, freezing."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from models.classifier import (
    backbone_blocks,
    build_classifier,
    parse_trainable,
    set_backbone_trainable,
)
from models.resunet import build_resunet
from models.resunet_pp import build_resunet_pp
from models.summary import count_params, model_flops, model_row

EXPECTED = {
    "resnet50": (25_817_218, 25_764_098, 53_120),
    "vgg16": (15_371_330, 15_371_330, 0),
    "resunet": (1_210_513, 1_206_129, 4_384),
    "resunet_pp": (4_070_385, 4_062_993, 7_392),
}


@pytest.fixture(scope="module")
def resnet50_256() -> keras.Model:
    return build_classifier("resnet50", (256, 256, 3), weights=None)


@pytest.fixture(scope="module")
def vgg16_256() -> keras.Model:
    return build_classifier("vgg16", (256, 256, 3), weights=None)


def _counts(model: keras.Model) -> tuple[int, int, int]:
    c = count_params(model)
    return c["total"], c["trainable"], c["non_trainable"]


def test_resnet50_counts_match_paper(resnet50_256: keras.Model) -> None:
    assert _counts(resnet50_256) == EXPECTED["resnet50"]
    assert resnet50_256.count_params() == EXPECTED["resnet50"][0]


def test_vgg16_counts(vgg16_256: keras.Model) -> None:
    assert _counts(vgg16_256) == EXPECTED["vgg16"]


@pytest.mark.parametrize(
    ("name", "builder"), [("resunet", build_resunet), ("resunet_pp", build_resunet_pp)]
)
def test_segmenter_counts(name: str, builder) -> None:
    assert _counts(builder((256, 256, 3))) == EXPECTED[name]


def test_classifier_flops_per_slice(resnet50_256: keras.Model, vgg16_256: keras.Model) -> None:
    # ResNet50 is ~3.86 G multiply-accumulates at 224 px; conv cost scales with pixel count.
    resnet = model_flops(resnet50_256) / 1e9
    assert resnet == pytest.approx(2 * 3.86 * (256 / 224) ** 2, rel=0.03)
    # VGG16's 13 convs are 15.35 GMACs at 224 px.
    assert model_flops(vgg16_256) / 1e9 == pytest.approx(2 * 15.35 * (256 / 224) ** 2, rel=0.02)
    row = model_row("resnet50", resnet50_256)
    assert set(row) == {"name", "total", "trainable", "non_trainable", "gflops"}
    assert row["gflops"] == pytest.approx(resnet, abs=1e-3)


def test_flops_counts_conv_and_dense_by_hand() -> None:
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, dilation_rate=1, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(x)
    model = keras.Model(inputs, outputs)
    expected = 2 * (64 * 9 * 2 * 4) + 2 * (16 * 9 * 4 * 4) + 2 * (4 * 5)
    assert model_flops(model) == expected


def test_trainable_modes_freeze_what_they_say(
    resnet50_256: keras.Model, vgg16_256: keras.Model
) -> None:
    try:
        inner = resnet50_256.get_layer("resnet50")
        blocks = backbone_blocks(inner, "resnet50")
        assert len(blocks) == 17 and blocks[0] == "stem" and blocks[-1] == "conv5_block3"

        assert set_backbone_trainable(resnet50_256, "resnet50", "frozen") == []
        head = _counts(resnet50_256)[1]
        assert head == 8192 * 256 + 256 + 2 * (256 * 256 + 256) + 256 * 2 + 2
        bns = [
            layer for layer in inner.layers if isinstance(layer, keras.layers.BatchNormalization)
        ]
        assert bns and not any(bn.trainable for bn in bns)

        top2 = set_backbone_trainable(resnet50_256, "resnet50", "top:2")
        assert top2 == ["conv5_block2", "conv5_block3"]
        for layer in inner.layers:
            in_top = layer.name.startswith(("conv5_block2_", "conv5_block3_"))
            assert layer.trainable == in_top or not layer.weights, layer.name
        assert inner.get_layer("conv5_block1_1_conv").trainable is False
        assert inner.get_layer("conv5_block3_3_bn").trainable is True

        assert set_backbone_trainable(vgg16_256, "vgg16", 1) == ["block5"]
        vgg_trainable = _counts(vgg16_256)[1]
        block5 = 3 * (3 * 3 * 512 * 512 + 512)
        assert vgg_trainable == head - 8192 * 256 + 2048 * 256 + block5
    finally:
        set_backbone_trainable(resnet50_256, "resnet50", "all")
        set_backbone_trainable(vgg16_256, "vgg16", "all")
    assert _counts(resnet50_256) == EXPECTED["resnet50"]


@pytest.mark.parametrize("bad", ["some", "top:x", "top:6", -1, True])
def test_parse_trainable_rejects(bad) -> None:
    with pytest.raises(ValueError, match=r"trainable|blocks"):
        parse_trainable(bad, 5)


def test_frozen_backbone_keeps_weights_and_bn_statistics_in_training() -> None:
    keras.utils.set_random_seed(0)
    model = build_classifier("resnet50", (64, 64, 3), weights=None, trainable="frozen")
    inner = model.get_layer("resnet50")
    before_backbone = [w.copy() for w in inner.get_weights()]
    before_head = [w.copy() for w in model.get_layer("resnet50_classifier_dense1").get_weights()]
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
        run_eagerly=True,  # one step: tracing the train function would cost more than it runs
    )
    rng = np.random.default_rng(0)
    x = rng.random((4, 64, 64, 3), dtype=np.float32)
    model.train_on_batch(x, np.array([0, 1, 0, 1]))
    for a, b in zip(before_backbone, inner.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # kernels and BN moving statistics untouched
    after_head = model.get_layer("resnet50_classifier_dense1").get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before_head, after_head, strict=True))
