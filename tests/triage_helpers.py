"""Tiny hand-set models for triage tests: real Keras models, saved as `.keras` + sidecar JSON.

- `bright_classifier`: P(tumour) rises with the brightest FLAIR pixel (synthetic tumours are bright
  on FLAIR), so routing follows the image content.
- `constant_classifier(p_normal)`: the same P(normal) for every slice (hand-set routing).
- `bright_segmenter`: sigmoid(k · (FLAIR − c)) per pixel: segments what is bright on FLAIR.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np

from pipeline.io.preprocess import PreprocessConfig
from pipeline.tracking import save_local_model

SIZE = 64


def _flair_conv(x: keras.KerasTensor, scale: float, bias: float, name: str) -> keras.KerasTensor:
    conv = keras.layers.Conv2D(1, 1, name=name)
    y = conv(x)
    kernel = np.zeros((1, 1, 3, 1), dtype=np.float32)
    kernel[0, 0, 1, 0] = scale  # channel 1 = FLAIR
    conv.set_weights([kernel, np.array([bias], dtype=np.float32)])
    return y


def bright_classifier(size: int = SIZE, cut: float = 0.8) -> keras.Model:
    """Softmax [P(normal), P(tumour)] with logit difference 40 · (max FLAIR − cut)."""
    inp = keras.Input((size, size, 3), name="bright_input")
    y = _flair_conv(inp, 1.0, 0.0, "bright_flair")
    y = keras.layers.GlobalMaxPooling2D(name="bright_max")(y)
    dense = keras.layers.Dense(2, activation="softmax", name="bright_probs")
    out = dense(y)
    kernel = np.array([[-20.0, 20.0]], np.float32)
    dense.set_weights([kernel, np.array([20 * cut, -20 * cut], np.float32)])
    return keras.Model(inp, out, name="bright_classifier")


def constant_classifier(p_normal: float, size: int = SIZE) -> keras.Model:
    """The same P(normal) for every input."""
    inp = keras.Input((size, size, 3), name="const_input")
    y = keras.layers.GlobalAveragePooling2D(name="const_pool")(inp)
    dense = keras.layers.Dense(2, activation="softmax", name="const_probs")
    out = dense(y)
    bias = np.array([math.log(p_normal), math.log(1.0 - p_normal)], np.float32)
    dense.set_weights([np.zeros((3, 2), np.float32), bias])
    return keras.Model(inp, out, name="const_classifier")


def bright_segmenter(size: int = SIZE, cut: float = 0.8) -> keras.Model:
    """Per-pixel sigmoid(40 · (FLAIR − cut)), shape (N, H, W, 1)."""
    inp = keras.Input((size, size, 3), name="seg_input")
    y = _flair_conv(inp, 40.0, -40.0 * cut, "seg_flair")
    out = keras.layers.Activation("sigmoid", name="seg_sigmoid")(y)
    return keras.Model(inp, out, name="bright_segmenter")


def save(model: keras.Model, path: Path, kind: str, size: int = SIZE) -> str:
    """Save with the sidecar `load_model` reads; returns the `.keras` path as a string."""
    return str(save_local_model(model, path, kind, PreprocessConfig(image_size=size)))
