"""ResUNet++ (Jha et al. 2019, "ResUNet++: An Advanced Architecture for Medical Image
Segmentation").

Against the paper (section III and Fig. 1) and its reference Keras code (DebeshJha/ResUNetPlusPlus,
`m_resunet.py`), with the default filters (16, 32, 64, 128, 256):

* stem block (paper: "stem block"): conv3x3 -> BN -> ReLU -> conv3x3, plus a 1x1 conv + BN shortcut,
  added, then squeeze-and-excitation (ratio 8) — 16 channels at full resolution;
* encoder: three residual units with 32, 64, 128 channels; each is pre-activated
  (BN -> ReLU -> conv3x3, twice), downsamples by a stride-2 first conv (paper: "strided convolution
  instead of pooling") with a matching stride-2 1x1 conv + BN shortcut, and ends in SE;
* bridge: ASPP with 256 channels (dilations 6, 12, 18 and 1, each conv3x3 + BN, summed, then 1x1
  conv) at 1/8 of the input size;
* decoder, three steps (128, 64, 32 channels): attention gate (encoder features of twice the
  resolution, conv3x3 + 2x2 max-pool, added to the conv3x3 of the decoder features, BN -> ReLU ->
  conv3x3, multiplying the decoder features) -> 2x nearest upsampling -> concatenate with the
  encoder tensor -> residual unit (stride 1, with SE as in the reference code);
* output: ASPP with 16 channels, then a 1x1 conv and a sigmoid (float32 under mixed precision).

The paper's text and the reference code agree on this layout; where the paper is silent (SE ratio,
BN inside the stem, SE after decoder units, the attention gate's exact convolutions) we follow the
reference code. The paper gives no parameter count for its 16-256 configuration; this build has
4,070,385 parameters at 256x256x3 (the count of the reference code rebuilt in Keras 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from models.blocks import aspp, attention_gate, preact_residual_block, stem_block
from models.resunet import check_segmenter_args


def build_resunet_pp(
    input_shape: Sequence[int] = (256, 256, 3),
    filters: Sequence[int] = (16, 32, 64, 128, 256),
    *,
    name: str = "resunet_pp",
) -> keras.Model:
    """Build ResUNet++.

    Args:
        input_shape: `(H, W, C)`; H and W multiples of 8.
        filters: channels of the stem, the three encoder units and the ASPP bridge.
        name: model name and layer-name prefix.

    Returns:
        A model mapping `(N, H, W, C)` float in [0, 1] to `(N, H, W, 1)` float32 tumour probability.
    """
    check_segmenter_args(input_shape, filters, levels=3)
    f0, f1, f2, f3, f4 = (int(f) for f in filters)
    inputs = keras.Input(shape=tuple(int(d) for d in input_shape), name=f"{name}_input")

    c1 = stem_block(inputs, f0, name=f"{name}_stem")
    c2 = preact_residual_block(c1, f1, strides=2, name=f"{name}_enc1")
    c3 = preact_residual_block(c2, f2, strides=2, name=f"{name}_enc2")
    c4 = preact_residual_block(c3, f3, strides=2, name=f"{name}_enc3")
    x = aspp(c4, f4, name=f"{name}_bridge")

    for level, (skip, width) in enumerate(((c3, f3), (c2, f2), (c1, f1)), start=1):
        x = attention_gate(skip, x, name=f"{name}_dec{level}_att")
        x = layers.UpSampling2D(2, name=f"{name}_dec{level}_up")(x)
        x = layers.Concatenate(name=f"{name}_dec{level}_concat")([x, skip])
        x = preact_residual_block(x, width, name=f"{name}_dec{level}_res")

    x = aspp(x, f0, name=f"{name}_head_aspp")
    x = layers.Conv2D(1, 1, padding="same", name=f"{name}_head_conv")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name=f"{name}_mask")(x)
    return keras.Model(inputs, outputs, name=name)
