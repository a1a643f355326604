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
