"""Custom Keras layers inside the models (registered, so `.keras` files load with safe mode on)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

# Caffe-style ImageNet channel means in BGR order (keras.applications.imagenet_utils, mode="caffe").
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="mri_triage")
class ImageNetCaffePreprocess(keras.layers.Layer):
    """`preprocess_input` of ResNet50 and VGG16 as a layer, for [0, 1] inputs.

    Scales to 0-255, reverses the channel axis (RGB -> BGR) and subtracts the ImageNet BGR means,
    exactly what `keras.applications.{resnet50,vgg16}.preprocess_input` does to 0-255 RGB images.
    Having it inside the model means a saved classifier takes [0, 1] slices and nothing outside has
    to remember the recipe.

    Input: `(N, H, W, 3)` float in [0, 1]. Output: `(N, H, W, 3)` float, roughly [-124, 152].
    """

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, self.compute_dtype) * 255.0
        x = ops.flip(x, axis=-1)
        mean = ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=self.compute_dtype)
        return x - mean

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape


class NearestUpsample(keras.layers.Layer):
    """`UpSampling2D` (nearest, channels last) as one image resize, for export only.

    Keras builds a nearest `UpSampling2D` from two `repeat`s, which a converted graph runs as
    tiles, transposes and reorders (a third of the ResUNet's time under OpenVINO on a CPU). Nearest
    resizing by a whole factor with half-pixel centres reads input pixel `i // f` for output `i`:
    the same values as the repeats, in one native op. Never saved: `for_export` swaps it in.
    """

    def __init__(self, size: tuple[int, int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = (int(size[0]), int(size[1]))

    def call(self, inputs: Any) -> Any:
        height, width = inputs.shape[1], inputs.shape[2]
        if height is None or width is None:
            height, width = ops.shape(inputs)[1], ops.shape(inputs)[2]
        new = (height * self.size[0], width * self.size[1])
        return ops.image.resize(inputs, new, interpolation="nearest", data_format="channels_last")

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        n, h, w, c = input_shape
        return (
            n,
            None if h is None else h * self.size[0],
            None if w is None else w * self.size[1],
            c,
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "size": self.size}


def for_export(model: keras.Model) -> keras.Model:
    """`model` with every nearest, channels-last `UpSampling2D` replaced by `NearestUpsample`
    (same outputs, a faster converted graph); the other layers are shared, not copied, so the
    weights are the model's own. A model without such a layer is returned as it is."""

    def swappable(layer: Any) -> bool:
        return (
            isinstance(layer, keras.layers.UpSampling2D)
            and layer.interpolation == "nearest"
            and layer.data_format == "channels_last"
        )

    if not any(swappable(layer) for layer in model.layers):
        return model

    def clone(layer: Any) -> Any:
        if swappable(layer):
            return NearestUpsample(layer.size, name=layer.name, dtype=layer.dtype_policy)
        return layer

    return keras.models.clone_model(model, clone_function=clone)
