"""Building blocks shared by the segmenters: tensor in, tensor out, every layer named `{name}_...`.

Two families live here:

* `lgg_residual_block` / `upsample_concat`: the residual block of the public Kaggle LGG "ResUNet"
  notebook that the MRI paper used (1x1 conv -> BN -> ReLU -> 3x3 conv -> BN, plus a 1x1 conv + BN
  projection shortcut, add, ReLU).
* `stem_block`, `preact_residual_block`, `squeeze_excite`, `aspp`, `attention_gate`: the ResUNet++
  blocks of Jha et al. 2019 (pre-activation residual units with squeeze-and-excitation, atrous
  spatial pyramid pooling, and the attention gate of the reference implementation).
"""

from __future__ import annotations

from typing import Any

from keras import layers

Tensor = Any  # a symbolic KerasTensor while a functional model is being built


def _channels(x: Tensor) -> int:
    channels = x.shape[-1]
    if channels is None:
        raise ValueError("the channel dimension must be known when building a model")
    return int(channels)


# --- the Kaggle LGG ResUNet ------------------------------------------------------------------


def lgg_residual_block(x: Tensor, filters: int, *, name: str) -> Tensor:
    """Residual block of the LGG ResUNet (spatial size kept).

    Args:
        x: `(N, H, W, C)` tensor.
        filters: output channels `F`.
        name: prefix for the block's layers.

    Returns:
        `(N, H, W, F)` tensor.
    """
    init = "he_normal"
    y = layers.Conv2D(filters, 1, kernel_initializer=init, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", kernel_initializer=init, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    s = layers.Conv2D(filters, 1, kernel_initializer=init, name=f"{name}_short_conv")(x)
    s = layers.BatchNormalization(name=f"{name}_short_bn")(s)
    y = layers.Add(name=f"{name}_add")([y, s])
    return layers.Activation("relu", name=f"{name}_out")(y)


def upsample_concat(x: Tensor, skip: Tensor, *, name: str) -> Tensor:
    """Nearest-neighbour 2x upsampling of `x`, concatenated with the encoder tensor `skip`.

    Args:
        x: `(N, H, W, C1)` tensor.
        skip: `(N, 2H, 2W, C2)` tensor.
        name: prefix for the layers.

    Returns:
        `(N, 2H, 2W, C1 + C2)` tensor.
    """
    up = layers.UpSampling2D(2, name=f"{name}_up")(x)
    return layers.Concatenate(name=f"{name}_concat")([up, skip])


# --- ResUNet++ (Jha et al. 2019) -------------------------------------------------------------


def squeeze_excite(x: Tensor, *, ratio: int = 8, name: str) -> Tensor:
    """Squeeze-and-excitation (Hu et al. 2018): reweight channels by a gated global descriptor.

    Args:
        x: `(N, H, W, C)` tensor.
        ratio: bottleneck reduction of the two bias-free dense layers (C -> C/ratio -> C).
        name: prefix for the layers.

    Returns:
        `(N, H, W, C)` tensor, `x` scaled per channel by a sigmoid gate in (0, 1).
    """
    channels = _channels(x)
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = layers.Dense(
        max(channels // ratio, 1),
        activation="relu",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_reduce",
    )(s)
    s = layers.Dense(
        channels,
        activation="sigmoid",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_expand",
    )(s)
    return layers.Multiply(name=f"{name}_scale")([x, s])


def stem_block(x: Tensor, filters: int, *, strides: int = 1, name: str) -> Tensor:
    """ResUNet++ stem: conv3x3 -> BN -> ReLU -> conv3x3, plus a 1x1 conv + BN shortcut, then SE.

    Args:
        x: `(N, H, W, C)` input tensor.
        filters: output channels `F`.
        strides: stride of the first conv and of the shortcut.
        name: prefix for the layers.

    Returns:
        `(N, H/strides, W/strides, F)` tensor.
    """
    y = layers.Conv2D(filters, 3, strides=strides, padding="same", name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2")(y)
    s = layers.Conv2D(filters, 1, strides=strides, padding="same", name=f"{name}_short_conv")(x)
    s = layers.BatchNormalization(name=f"{name}_short_bn")(s)
    y = layers.Add(name=f"{name}_add")([y, s])
    return squeeze_excite(y, name=f"{name}_se")


def preact_residual_block(x: Tensor, filters: int, *, strides: int = 1, name: str) -> Tensor:
    """ResUNet++ residual unit: (BN -> ReLU -> conv3x3) x 2 plus a 1x1 conv + BN shortcut, then SE.

    Downsampling is by the stride of the first conv (and of the shortcut), not by pooling.

    Args:
        x: `(N, H, W, C)` tensor.
        filters: output channels `F`.
        strides: 2 in the encoder, 1 in the decoder.
        name: prefix for the layers.

    Returns:
        `(N, H/strides, W/strides, F)` tensor.
    """
    y = layers.BatchNormalization(name=f"{name}_bn1")(x)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, strides=strides, padding="same", name=f"{name}_conv1")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = layers.Activation("relu", name=f"{name}_relu2")(y)
    y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2")(y)
    s = layers.Conv2D(filters, 1, strides=strides, padding="same", name=f"{name}_short_conv")(x)
    s = layers.BatchNormalization(name=f"{name}_short_bn")(s)
    y = layers.Add(name=f"{name}_add")([y, s])
    return squeeze_excite(y, name=f"{name}_se")


def aspp(x: Tensor, filters: int, *, rate_scale: int = 1, name: str) -> Tensor:
    """Atrous spatial pyramid pooling: parallel 3x3 convs at dilation 6/12/18 and 1, each + BN,
    summed, then a 1x1 conv (the ResUNet++ bridge and output head).

    Args:
        x: `(N, H, W, C)` tensor.
        filters: output channels `F`.
        rate_scale: multiplies the dilation rates (6, 12, 18).
        name: prefix for the layers.

    Returns:
        `(N, H, W, F)` tensor.
    """
    branches = []
    for i, rate in enumerate((6, 12, 18, 1), start=1):
        d = rate * rate_scale if rate > 1 else 1
        b = layers.Conv2D(filters, 3, dilation_rate=d, padding="same", name=f"{name}_conv{i}")(x)
        branches.append(layers.BatchNormalization(name=f"{name}_bn{i}")(b))
    y = layers.Add(name=f"{name}_sum")(branches)
    return layers.Conv2D(filters, 1, padding="same", name=f"{name}_project")(y)


def attention_gate(skip: Tensor, x: Tensor, *, name: str) -> Tensor:
    """ResUNet++ attention: encoder features `skip` (twice the resolution of `x`) gate `x`.

    BN -> ReLU -> conv3x3 on `skip`, 2x2 max-pooled; BN -> ReLU -> conv3x3 on `x`; their sum goes
    through BN -> ReLU -> conv3x3 and multiplies `x` element-wise (the reference implementation).

    Args:
        skip: `(N, 2H, 2W, Cs)` encoder tensor.
        x: `(N, H, W, C)` decoder tensor.
        name: prefix for the layers.

    Returns:
        `(N, H, W, C)` tensor.
    """
    filters = _channels(x)
    g = layers.BatchNormalization(name=f"{name}_g_bn")(skip)
    g = layers.Activation("relu", name=f"{name}_g_relu")(g)
    g = layers.Conv2D(filters, 3, padding="same", name=f"{name}_g_conv")(g)
    g = layers.MaxPooling2D(2, name=f"{name}_g_pool")(g)
    h = layers.BatchNormalization(name=f"{name}_x_bn")(x)
    h = layers.Activation("relu", name=f"{name}_x_relu")(h)
    h = layers.Conv2D(filters, 3, padding="same", name=f"{name}_x_conv")(h)
    a = layers.Add(name=f"{name}_sum")([g, h])
    a = layers.BatchNormalization(name=f"{name}_bn")(a)
    a = layers.Activation("relu", name=f"{name}_relu")(a)
    a = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")(a)
    return layers.Multiply(name=f"{name}_gate")([a, x])


__all__ = [
    "aspp",
    "attention_gate",
    "lgg_residual_block",
    "preact_residual_block",
    "squeeze_excite",
    "stem_block",
    "upsample_concat",
]
