"""A U-Net around a classifier backbone, to pre-train the backbone on the segmentation masks.

Without ImageNet weights a ResNet50 or VGG16 learns slowly from ~2,000 slice labels. A mask holds
far more signal per slice than its one label, so the backbone is first trained as the encoder of a
U-Net on the tumour masks, then fine-tuned with the paper's classification head ("transfer from an
MRI task"). `build_encoder_unet` shares its encoder layers with `base`: training the U-Net trains
`base`, whose weights then go into `build_classifier(weights=PATH)` through a `.weights.h5` file.

Layout: input `(N, S, S, 3)` in [0, 1] -> `{name}_preprocess` (the classifier's own ImageNet
caffe step) -> `base` -> four decoder steps (2x upsampling, concatenation with the encoder feature
map of that scale, 3x3 conv + BN + ReLU) -> 2x upsampling -> 3x3 conv -> 1x1 sigmoid `(N, S, S, 1)`.
"""

from __future__ import annotations

import keras
from keras import layers

from models.layers import ImageNetCaffePreprocess

#: Encoder feature maps at 1/2, 1/4, 1/8 and 1/16 of the input size (the backbone's output is 1/32).
SKIPS = {
    "resnet50": ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"),
    "vgg16": ("block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"),
}
DECODER_FILTERS = (256, 128, 64, 32)


def build_encoder_unet(
    base: keras.Model, backbone: str, *, name: str = "encoder_unet"
) -> keras.Model:
    """A segmentation model whose encoder is `base` (its layers are shared, not copied).

    Args:
        base: the headless backbone from `models.classifier.load_backbone`, input `(S, S, 3)` with
            S a multiple of 32.
        backbone: "resnet50" or "vgg16" (names the skip layers).
        name: model name and layer prefix.

    Returns:
        A model mapping `(N, S, S, 3)` float in [0, 1] to `(N, S, S, 1)` float32 P(tumour).
    """
    if backbone not in SKIPS:
        raise ValueError(f"backbone must be one of {sorted(SKIPS)}; got {backbone!r}")
    size = base.input_shape[1]
    if size is None or size % 32:
        raise ValueError(f"the encoder U-Net needs an input size divisible by 32; got {size}")
    features = keras.Model(
        base.input,
        [base.get_layer(n).output for n in SKIPS[backbone]] + [base.output],
        name=f"{name}_encoder",
    )
    inputs = keras.Input(shape=base.input_shape[1:], name=f"{name}_input")
    *skips, x = features(ImageNetCaffePreprocess(name=f"{name}_preprocess")(inputs))
    for i, (skip, filters) in enumerate(zip(reversed(skips), DECODER_FILTERS, strict=True)):
        x = layers.UpSampling2D(2, name=f"{name}_up{i}")(x)
        x = layers.Concatenate(name=f"{name}_concat{i}")([x, skip])
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    x = layers.UpSampling2D(2, name=f"{name}_up_out")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name=f"{name}_conv_out")(x)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name=f"{name}_mask")(x)
    return keras.Model(inputs, outputs, name=name)
