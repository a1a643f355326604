"""tf.data pipelines for training: slices of chosen patients in memory, augmented on train only.

Decoding (TIF/NIfTI) and resizing go through `pipeline.io.slices.load_patient` and
`pipeline.io.preprocess.patient_inputs` once per patient, so training sees exactly the pixels triage
will. The training arrays are kept as uint8 (4x smaller than float32) and turned back into [0, 1]
floats in the pipeline; validation and test slices (`exact=True`) keep triage's own float inputs,
so the operating point, temperature and checkpoint are chosen on the numbers triage will score.
Augmentation (train only) is applied to image and mask together: horizontal flip, small rotation
(±10°) and shift (±8%); brightness (±0.1) and contrast (×0.85-1.15) touch the image only. Vertical
flips are left out: an upside-down axial slice is not an anatomy the model meets.

`augment="strong"` (nnU-Net's kind of intensity augmentation, for scanners and sequences that
look unlike the training set) adds, per slice: rotation to ±15° and scaling ×0.85-1.15 (image and
mask), and on the image a gamma change (γ log-uniform in 0.7-1.5, half the slices),
multiplicative brightness (×0.8-1.2, half the slices), a wider contrast range (×0.75-1.25) and
Gaussian noise inside the head (σ up to 0.03, a fifth of the slices).

`modality_dropout=p` (three-sequence input only) replaces, on a share p of the training slices,
the pre-contrast channel, the post-contrast channel or both (a third of those slices each) by
FLAIR: what the Kaggle LGG set stores for a patient without that sequence, and what the NIfTI
reader assembles for a source without it (BraTS has no pre-contrast). A model trained so uses the
other sequences where they are there and falls back on FLAIR where they are not.

With the "adaptive" input mode (the sequences where stored, FLAIR of slices k-1, k, k+1 where one
is missing) `modality_dropout=p` instead shows a share p of the training slices that have all
three sequences in their FLAIR form, k-1, k, k+1 (`load_slices(..., neighbours=True)` keeps the
neighbouring FLAIR planes for it): one model learns both forms triage may give it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.io.preprocess import (
    PreprocessConfig,
    flair_neighbours,
    patient_inputs,
    resize_mask,
)
from pipeline.io.slices import load_patient

ROTATION_DEG = 10.0
SHIFT = 0.08
BRIGHTNESS = 0.1
CONTRAST = (0.85, 1.15)

#: `augment` values: "standard" (above) or "strong" (+ scaling, gamma, brightness, noise).
AUGMENTS = ("standard", "strong")
STRONG: dict[str, Any] = {
    "rotation_deg": 15.0,
    "scale": (0.85, 1.15),
    "gamma": (0.7, 1.5),
    "gamma_p": 0.5,
    "multiply": (0.8, 1.2),
    "multiply_p": 0.5,
    "contrast": (0.75, 1.25),
    "noise_sigma": 0.03,
    "noise_p": 0.2,
}


@dataclass
class SliceArrays:
    """Model-size slices of a set of patients.

    Attributes:
        images: `(N, S, S, 3)` uint8 (value = round(255 x [0, 1] intensity)), or float32 in
            [0, 1] as triage computes them (`load_slices(..., exact=True)`).
        masks: `(N, S, S)` bool tumour masks (all False where a slice has no ground truth).
        labels: `(N,)` int32, 1 = tumour slice (ground truth has tumour pixels), 0 = normal.
        patients: `(N,)` patient key of each slice (identifiers: keep out of logs).
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    patients: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, keep: np.ndarray) -> SliceArrays:
        """The slices where `keep` `(N,)` bool is True."""
        idx = np.flatnonzero(keep)
        return SliceArrays(
            self.images[idx], self.masks[idx], self.labels[idx], [self.patients[i] for i in idx]
        )

    def float_images(self) -> np.ndarray:
        """`(N, S, S, 3)` float32 in [0, 1]."""
        if self.images.dtype == np.float32:
            return self.images
        return self.images.astype(np.float32) / np.float32(255.0)


def load_slices(
    table: pd.DataFrame,
    patients: Sequence[str],
    config: PreprocessConfig,
    exact: bool = False,
    neighbours: bool = False,
) -> SliceArrays:
    """Load and resize every labelled slice of `patients` (one `load_patient` call each).

    Slices without ground truth (`has_mask` False) are dropped: they cannot be labelled.

    Args:
        table: index table (`build_index(...).table`).
        patients: patient keys to load, in order.
        config: preprocessing (image size S).
        exact: keep the model inputs as float32, exactly as triage feeds them (validation and
            test); else round them to uint8 levels (training: 4x less memory, and augmentation
            moves the pixels far more than the rounding).
        neighbours: "adaptive" input mode only: two more channels, FLAIR of slices k-1 and k+1
            (`(N, S, S, 5)` images), for `make_dataset`'s `modality_dropout`.

    Returns:
        The slices, patient by patient in index order.
    """
    if neighbours and config.input_mode != "adaptive":
        raise ValueError(f"neighbours is for input_mode 'adaptive', not {config.input_mode!r}")
    size = config.image_size
    images, masks, labels, keys = [], [], [], []
    for patient in patients:
        rows = table[(table["patient"] == patient) & table["has_mask"].astype(bool)]
        if rows.empty:
            continue
        ps = load_patient(rows, config, as_uint8=True)  # the same inputs, less memory
        x = patient_inputs(ps.images, config)
        if neighbours:
            x = np.concatenate([x, flair_neighbours(x)], axis=-1)
        images.append(x.astype(np.float32) if exact else np.round(x * 255.0).astype(np.uint8))
        if ps.masks is None:
            m = np.zeros((len(x), size, size), dtype=bool)
        else:
            m = resize_mask(ps.masks, size).astype(bool).reshape(len(x), size, size)
        masks.append(m)
        labels.append(rows["tumour_pixels"].to_numpy() > 0)
        keys += [patient] * len(x)
    if not images:
        empty = np.zeros((0, size, size), dtype=bool)
        channels = 5 if neighbours else 3
        return SliceArrays(
            np.zeros((0, size, size, channels), np.uint8), empty, np.zeros(0, np.int32), []
        )
    return SliceArrays(
        np.concatenate(images),
        np.concatenate(masks),
        np.concatenate(labels).astype(np.int32),
        keys,
    )


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights `N / (2 n_c)` for labels 0/1 (1.0 for an absent class)."""
    labels = np.asarray(labels).astype(int)
    n = max(len(labels), 1)
    return {
        c: (n / (2.0 * int(np.sum(labels == c)))) if np.any(labels == c) else 1.0 for c in (0, 1)
    }


def _augment(x: Any, y: Any, seed: int, with_mask: bool, strong: bool = False) -> tuple[Any, Any]:
    """Random geometric (image + mask together) and photometric (image only) changes, per slice.

    `strong`: the `STRONG` ranges (rotation, scaling, gamma, brightness, contrast, noise)."""
    import tensorflow as tf

    batch = tf.shape(x)[0]
    stack = tf.concat([x, y], axis=-1) if with_mask else x
    stack = tf.image.random_flip_left_right(stack, seed=seed)
    degrees = STRONG["rotation_deg"] if strong else ROTATION_DEG
    angle = tf.random.uniform([batch], -1.0, 1.0, seed=seed + 1) * (degrees * math.pi / 180)
    size = tf.cast(tf.shape(x)[1], tf.float32)
    shift = tf.random.uniform([batch, 2], -SHIFT, SHIFT, seed=seed + 2) * size
    if strong:  # zoom s > 1 enlarges: each output pixel reads the input at 1/s the distance
        zoom = tf.random.uniform([batch], *STRONG["scale"], seed=seed + 6)
    else:
        zoom = tf.ones([batch])
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # Rotation and zoom about the centre, then shift (output -> input, as ImageProjectiveTransform).
    cx = cy = (size - 1.0) / 2.0
    tx = cx - cos * cx + sin * cy - shift[:, 0]
    ty = cy - sin * cx - cos * cy - shift[:, 1]
    zeros = tf.zeros_like(cos)
    transform = tf.stack([cos, -sin, tx, sin, cos, ty, zeros, zeros], axis=1)
    stack = tf.raw_ops.ImageProjectiveTransformV3(
        images=stack,
        transforms=transform,
        output_shape=tf.shape(stack)[1:3],
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
        fill_value=0.0,
    )
    image = stack[..., :3]
    if strong:
        image = _strong_intensity(image, batch, seed)
    low, high = STRONG["contrast"] if strong else CONTRAST
    brightness = tf.random.uniform([batch, 1, 1, 1], -BRIGHTNESS, BRIGHTNESS, seed=seed + 3)
    contrast = tf.random.uniform([batch, 1, 1, 1], low, high, seed=seed + 4)
    mean = tf.reduce_mean(image, axis=[1, 2, 3], keepdims=True)
    image = tf.clip_by_value((image - mean) * contrast + mean + brightness, 0.0, 1.0)
    if with_mask:
        return image, tf.cast(stack[..., 3:] > 0.5, tf.float32)
    return image, y


def _drop_modalities(x: Any, p: float, seed: int) -> Any:
    """Replace pre-contrast, post-contrast or both (a third each) by FLAIR on a share `p` of the
    slices of a `(B, S, S, 3)` batch (channels pre, FLAIR, post)."""
    import tensorflow as tf

    batch = tf.shape(x)[0]
    dropped = tf.random.uniform([batch], seed=seed + 14) < p
    # 0: pre-contrast, 1: post-contrast, 2: both
    which = tf.random.uniform([batch], 0, 3, dtype=tf.int32, seed=seed + 15)
    pre = tf.reshape(tf.logical_and(dropped, tf.not_equal(which, 1)), [-1, 1, 1])
    post = tf.reshape(tf.logical_and(dropped, tf.not_equal(which, 0)), [-1, 1, 1])
    flair = x[..., 1]
    return tf.stack(
        [tf.where(pre, flair, x[..., 0]), flair, tf.where(post, flair, x[..., 2])], axis=-1
    )


def _flair_form(x: Any, p: float, seed: int) -> Any:
    """Three channels of a `(B, S, S, 5)` "adaptive" batch (the triage input, then FLAIR of slices
    k-1 and k+1): on a share `p` of the slices FLAIR of k-1, k, k+1, else the triage input."""
    import tensorflow as tf

    batch = tf.shape(x)[0]
    alone = tf.reshape(tf.random.uniform([batch], seed=seed + 16) < p, [-1, 1, 1, 1])
    flair_form = tf.stack([x[..., 3], x[..., 1], x[..., 4]], axis=-1)
    return tf.where(alone, flair_form, x[..., :3])


def _strong_intensity(image: Any, batch: Any, seed: int) -> Any:
    """Gamma, multiplicative brightness and in-head noise, each on a random share of slices."""
    import tensorflow as tf

    def chosen(p: float, offset: int) -> Any:
        return tf.random.uniform([batch, 1, 1, 1], seed=seed + offset) < p

    g_low, g_high = STRONG["gamma"]
    gamma = tf.exp(
        tf.random.uniform([batch, 1, 1, 1], math.log(g_low), math.log(g_high), seed=seed + 7)
    )
    image = tf.clip_by_value(image, 0.0, 1.0)
    image = tf.where(chosen(STRONG["gamma_p"], 8), tf.pow(image, gamma), image)
    factor = tf.random.uniform([batch, 1, 1, 1], *STRONG["multiply"], seed=seed + 9)
    image = tf.where(chosen(STRONG["multiply_p"], 10), image * factor, image)
    sigma = tf.random.uniform([batch, 1, 1, 1], 0.0, STRONG["noise_sigma"], seed=seed + 11)
    noise = tf.random.normal(tf.shape(image), seed=seed + 12) * sigma
    head = tf.cast(image > 0.0, image.dtype)  # the background stays black
    return tf.where(chosen(STRONG["noise_p"], 13), image + noise * head, image)


def make_dataset(
    arrays: SliceArrays,
    task: str,
    batch: int,
    *,
    training: bool,
    seed: int = 0,
    keep_empty: float = 1.0,
    augment: str = "standard",
    modality_dropout: float = 0.0,
) -> Any:
    """A batched, prefetched `tf.data.Dataset` of `(image, target)`.

    Args:
        arrays: the slices.
        task: "classifier" (target `(B,)` int32 label) or "segmenter" (target `(B, S, S, 1)`
            float32 mask).
        batch: batch size.
        training: shuffle (seeded, reshuffled each epoch) and augment; else keep order.
        seed: shuffling and augmentation seed.
        keep_empty: segmenter training only: the chance that a tumour-free slice is kept in an
            epoch (drawn afresh each epoch), so the model sees a sampled share of empty slices.
            Below 1 the dataset repeats endlessly: pass `steps_per_epoch` to `fit`.
        augment: training augmentation, one of `AUGMENTS`.
        modality_dropout: training only: the share of slices whose pre-contrast and/or
            post-contrast channel is replaced by FLAIR, or with "adaptive" images (5 channels)
            shown in their FLAIR form (see the module's docstring).

    Returns:
        Dataset of `(B, S, S, 3)` float32 in [0, 1] and the target; the decoded slices are cached.
    """
    import tensorflow as tf

    if task not in ("classifier", "segmenter"):
        raise ValueError(f"task must be 'classifier' or 'segmenter', got {task!r}")
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if len(arrays) == 0:
        raise ValueError("no slices to build a dataset from")
    if not 0.0 <= modality_dropout < 1.0:
        raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
    target = arrays.labels if task == "classifier" else arrays.masks[..., None].astype(np.uint8)
    ds = tf.data.Dataset.from_tensor_slices((arrays.images, target))

    scale = 1.0 if arrays.images.dtype == np.float32 else 255.0

    def to_float(x: Any, y: Any) -> tuple[Any, Any]:
        x = tf.cast(x, tf.float32) / scale
        return x, (tf.cast(y, tf.float32) if task == "segmenter" else tf.cast(y, tf.int32))

    ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if training:
        ds = ds.shuffle(len(arrays), seed=seed, reshuffle_each_iteration=True)
    if training and task == "segmenter" and keep_empty < 1.0:
        ds = ds.filter(
            lambda x, y: tf.logical_or(
                tf.reduce_max(y) > 0.5, tf.random.uniform([], seed=seed + 5) < keep_empty
            )
        )
        # Endless, so every epoch has the same number of batches (`steps_per_epoch` in `fit`).
        ds = ds.repeat()
    ds = ds.batch(batch)
    channels = arrays.images.shape[-1]
    if channels == 5:  # "adaptive" with the FLAIR neighbours (`load_slices(neighbours=True)`)
        if not training:
            raise ValueError("FLAIR neighbours (5 channels) are for training batches only")
        ds = ds.map(
            lambda x, y: (_flair_form(x, modality_dropout, seed), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    elif training and modality_dropout > 0:
        ds = ds.map(
            lambda x, y: (_drop_modalities(x, modality_dropout, seed), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if training:
        ds = ds.map(
            lambda x, y: _augment(x, y, seed, task == "segmenter", augment == "strong"),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def split_hash(splits: dict[str, list[str]]) -> str:
    """Short hash of a patient split (same split, same hash) that reveals no patient key."""
    text = "|".join(f"{k}:{','.join(sorted(v))}" for k, v in sorted(splits.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
