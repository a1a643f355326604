"""ResUNet, the MRI paper's segmenter (the public Kaggle LGG "ResUNet" notebook architecture).

Layout at the default filters (16, 32, 64, 128, 256):

* stem: 3x3 conv(16, ReLU) -> BN -> 3x3 conv(16, ReLU) -> BN, then 2x2 max-pooling;
* encoder: residual blocks of 32, 64, 128 channels, each followed by 2x2 max-pooling;
* bottleneck: residual block of 256 channels (at 1/16 of the input size);
* decoder: 4 x (2x upsampling -> concatenate with the encoder tensor of that size -> residual block)
  with 128, 64, 32, 16 channels;
* output: 1x1 conv with sigmoid, computed in float32 even under a mixed precision policy.

Each residual block is `models.blocks.lgg_residual_block` (1x1 conv -> BN -> ReLU -> 3x3 conv -> BN,
plus a 1x1 conv + BN shortcut). At 256x256x3 this has 1,210,513 parameters (1,206,129 trainable,
4,384 non-trainable: the BN moving means and variances).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from models.blocks import lgg_residual_block, upsample_concat


def check_segmenter_args(input_shape: Sequence[int], filters: Sequence[int], levels: int) -> None:
    """Raise `ValueError` unless `input_shape` is (H, W, C) with H, W divisible by 2**levels and
    `filters` holds five positive channel counts."""
    if len(input_shape) != 3 or any(int(d) <= 0 for d in input_shape):
        raise ValueError(f"input_shape must be (height, width, channels); got {tuple(input_shape)}")
    step = 2**levels
    if input_shape[0] % step or input_shape[1] % step:
        raise ValueError(
            f"height and width must be multiples of {step} (the network halves them {levels} "
            f"times); got {tuple(input_shape)}"
        )
    if len(filters) != 5 or any(int(f) <= 0 for f in filters):
        raise ValueError(f"filters must be five positive channel counts; got {tuple(filters)}")


def build_resunet(
    input_shape: Sequence[int] = (256, 256, 3),
    filters: Sequence[int] = (16, 32, 64, 128, 256),
    *,
    name: str = "resunet",
) -> keras.Model:
    """Build the LGG ResUNet.

    Args:
        input_shape: `(H, W, C)`; H and W multiples of 16.
        filters: channels of the stem, the three encoder blocks and the bottleneck.
        name: model name and layer-name prefix.

    Returns:
        A model mapping `(N, H, W, C)` float in [0, 1] to `(N, H, W, 1)` float32 tumour probability.
    """
    check_segmenter_args(input_shape, filters, levels=4)
    f0, f1, f2, f3, f4 = (int(f) for f in filters)
    init = "he_normal"
    inputs = keras.Input(shape=tuple(int(d) for d in input_shape), name=f"{name}_input")

    x = layers.Conv2D(f0, 3, padding="same", activation="relu", kernel_initializer=init,
                      name=f"{name}_stem_conv1")(inputs)  # fmt: skip
    x = layers.BatchNormalization(name=f"{name}_stem_bn1")(x)
    x = layers.Conv2D(f0, 3, padding="same", activation="relu", kernel_initializer=init,
                      name=f"{name}_stem_conv2")(x)  # fmt: skip
    e0 = layers.BatchNormalization(name=f"{name}_stem_bn2")(x)

    skips = [e0]
    x = e0
    for level, width in enumerate((f1, f2, f3), start=1):
        x = layers.MaxPooling2D(2, name=f"{name}_pool{level}")(x)
        x = lgg_residual_block(x, width, name=f"{name}_enc{level}")
        skips.append(x)
    x = layers.MaxPooling2D(2, name=f"{name}_pool4")(x)
    x = lgg_residual_block(x, f4, name=f"{name}_bottleneck")

    for level, (width, skip) in enumerate(zip((f3, f2, f1, f0), reversed(skips), strict=True), 1):
        x = upsample_concat(x, skip, name=f"{name}_dec{level}")
        x = lgg_residual_block(x, width, name=f"{name}_dec{level}_res")

    outputs = layers.Conv2D(1, 1, padding="same", activation="sigmoid", dtype="float32",
                            name=f"{name}_mask")(x)  # fmt: skip
    return keras.Model(inputs, outputs, name=name)
