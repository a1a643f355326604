"""Encoder pre-training on the masks: the U-Net shares the backbone, and the options are checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.learn.recipes import preset_values
from pipeline.learn.training import TrainConfig


@pytest.mark.parametrize(("backbone", "size"), [("vgg16", 32), ("resnet50", 64)])
def test_encoder_unet_trains_the_backbone_it_wraps(backbone: str, size: int) -> None:
    import keras

    from models.classifier import load_backbone
    from models.encoder_unet import build_encoder_unet

    keras.utils.set_random_seed(0)
    base = load_backbone(backbone, (size, size, 3), None)
    unet = build_encoder_unet(base, backbone)
    assert unet.output_shape == (None, size, size, 1)
    before = [w.copy() for w in base.get_weights()]
    unet.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    x = np.random.default_rng(0).random((4, size, size, 3)).astype("float32")
    y = (x[..., :1] > 0.5).astype("float32")
    unet.fit(x, y, epochs=1, batch_size=4, verbose=0)
    changed = [not np.allclose(a, b) for a, b in zip(before, base.get_weights(), strict=True)]
    assert any(changed), "training the U-Net left its encoder (the backbone) unchanged"
    out = unet.predict(x, verbose=0)
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0


def test_encoder_unet_rejects_what_it_cannot_wrap() -> None:
    from models.classifier import load_backbone
    from models.encoder_unet import build_encoder_unet

    with pytest.raises(ValueError, match="backbone must be one of"):
        build_encoder_unet(load_backbone("vgg16", (32, 32, 3), None), "densenet")
    with pytest.raises(ValueError, match="divisible by 32"):
        build_encoder_unet(load_backbone("vgg16", (48, 48, 3), None), "vgg16")


def test_pretraining_only_for_a_classifier_without_weights(tmp_path: Path) -> None:
    ok = TrainConfig.create("classifier", str(tmp_path), "resnet50", pretrain_epochs=3)
    assert ok.pretrain_epochs == 3 and ok.weights is None
    with pytest.raises(ValueError, match="starts without weights"):
        TrainConfig.create(
            "classifier", str(tmp_path), "resnet50", weights="imagenet", pretrain_epochs=3
        )
    with pytest.raises(ValueError, match="starts without weights"):
        TrainConfig.create("segmenter", str(tmp_path), "resunet", pretrain_epochs=3)
    with pytest.raises(ValueError, match=">= 0"):
        TrainConfig.create("classifier", str(tmp_path), "resnet50", pretrain_epochs=-1)


def test_presets_drop_pretraining_when_weights_are_given() -> None:
    for preset in ("cpu", "gpu"):
        assert "pretrain_epochs" not in preset_values(preset, "classifier", pretrained=True)
        assert "pretrain_epochs" not in preset_values(preset, "segmenter")
