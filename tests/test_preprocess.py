"""Pure preprocessing: normalisation idempotence, resize inverses, channel assembly, config."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.io.preprocess import (
    PreprocessConfig,
    assemble_channels,
    normalize_intensity,
    prepare_batch,
    resize_image,
    resize_mask,
    restore_mask,
    restore_masks,
)


def _raw_volume(seed: int, shift: float, scale: float) -> np.ndarray:
    """A raw-MRI-like volume: constant background, skewed foreground, a few hot voxels."""
    rng = np.random.default_rng(seed)
    vol = np.zeros((24, 20, 12), dtype=np.float32)
    vol[2:22, 2:18, 1:11] = rng.gamma(4.0, 50.0, size=(20, 16, 10))  # 3,200 voxels
    vol[5, 5, 2] = 30000.0  # an outlier the percentile clip must ignore
    return vol * scale + shift


def test_config_roundtrip_ignores_unknown_keys() -> None:
    cfg = PreprocessConfig(image_size=128, low_percentile=1.0, high_percentile=99.0)
    data = cfg.to_dict()
    assert data == {
        "image_size": 128,
        "channels": 3,
        "low_percentile": 1.0,
        "high_percentile": 99.0,
        "input_mode": "rgb",
        "normalize": "none",
    }
    assert PreprocessConfig.from_dict({**data, "added_later": "x"}) == cfg
    # A sidecar written before input modes existed rebuilds the paper's preprocessing.
    old = {k: v for k, v in data.items() if k not in ("input_mode", "normalize")}
    assert PreprocessConfig.from_dict(old) == cfg
    assert PreprocessConfig.from_dict({}) == PreprocessConfig()


@pytest.mark.parametrize(
    "kwargs",
    [{"image_size": 0}, {"low_percentile": 60.0, "high_percentile": 50.0}, {"channels": 1}],
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PreprocessConfig(**kwargs)


def test_normalize_raw_int16_to_unit_range_with_background_zero() -> None:
    raw = _raw_volume(0, 0.0, 1.0).astype(np.int16)
    out = normalize_intensity(raw)
    assert out.dtype == np.float32 and out.shape == raw.shape
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.all(out[raw == 0] == 0.0)
    # the outlier is clipped, so ordinary tissue is not squashed towards 0
    tissue = out[2:22, 2:18, 1:11]
    assert np.median(tissue) > 0.2


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shift=st.floats(-500, 500),
    scale=st.floats(0.01, 100),
    low=st.floats(0.0, 5.0),
    high=st.floats(95.0, 100.0),
)
def test_normalize_twice_equals_once(
    seed: int, shift: float, scale: float, low: float, high: float
) -> None:
    once = normalize_intensity(_raw_volume(seed, shift, scale), low, high)
    np.testing.assert_array_equal(normalize_intensity(once, low, high), once)
    assert once.min() >= 0.0 and once.max() <= 1.0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), shift=st.floats(-500, 500), scale=st.floats(0.1, 10))
def test_normalize_ignores_scanner_gain_and_offset(seed: int, shift: float, scale: float) -> None:
    base = normalize_intensity(_raw_volume(seed, 0.0, 1.0))
    moved = normalize_intensity(_raw_volume(seed, shift, scale))
    np.testing.assert_allclose(moved, base, atol=1e-4)


def test_normalize_z_scored_volume_keeps_its_background_at_zero() -> None:
    vol = np.full((8, 8, 4), -3.6, dtype=np.float32)  # deepmedic-style background
    vol[2:6, 2:6] = np.linspace(-1.0, 5.0, 64, dtype=np.float32).reshape(4, 4, 4)
    out = normalize_intensity(vol)
    assert np.all(out[vol == -3.6] == 0.0) and out.max() == 1.0


def test_assemble_channels_fills_missing_with_flair() -> None:
    flair, t1, t1ce = (np.full((4, 5), v, dtype=np.float32) for v in (0.5, 0.2, 0.9))
    full = assemble_channels(flair, t1, t1ce)
    assert full.shape == (4, 5, 3)
    assert full[0, 0].tolist() == pytest.approx([0.2, 0.5, 0.9])
    only = assemble_channels(flair)
    assert np.all(only == 0.5)
    assert assemble_channels(flair, None, t1ce)[0, 0].tolist() == pytest.approx([0.5, 0.5, 0.9])
    with pytest.raises(ValueError, match="t1ce shape"):
        assemble_channels(flair, t1, np.zeros((3, 3), np.float32))


@settings(max_examples=30, deadline=None)
@given(
    h=st.integers(4, 40), w=st.integers(4, 40), factor=st.integers(1, 4), seed=st.integers(0, 99)
)
def test_restore_mask_inverts_an_integer_upscale(h: int, w: int, factor: int, seed: int) -> None:
    mask = np.random.default_rng(seed).random((h, w)) > 0.6
    big = resize_mask(mask, (h * factor, w * factor))
    assert big.dtype == bool and big.shape == (h * factor, w * factor)
    np.testing.assert_array_equal(restore_mask(big, (h, w)), mask)


def test_restore_masks_accepts_segmenter_output() -> None:
    probs = np.zeros((2, 8, 8, 1), dtype=np.float32)
    probs[0, 2:6, 2:6, 0] = 0.9
    back = restore_masks(probs, (16, 16))
    assert back.shape == (2, 16, 16) and back.dtype == bool
    assert back[0].sum() == 64 and not back[1].any()


def test_area_resize_preserves_mean_and_constant_images() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((64, 64, 3)).astype(np.float32)
    small = resize_image(img, 32)
    assert small.shape == (32, 32, 3)
    np.testing.assert_allclose(small.mean(axis=(0, 1)), img.mean(axis=(0, 1)), atol=1e-5)
    np.testing.assert_allclose(small[0, 0], img[:2, :2].mean(axis=(0, 1)), atol=1e-6)
    const = np.full((5, 37, 41, 3), 0.25, dtype=np.float32)
    np.testing.assert_allclose(resize_image(const, 16), 0.25, atol=1e-6)


def test_prepare_batch_shape_range_and_identity() -> None:
    images = np.random.default_rng(1).random((3, 40, 48, 3)).astype(np.float32)
    out = prepare_batch(images, PreprocessConfig(image_size=16))
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    same = prepare_batch(images[:, :16, :16], PreprocessConfig(image_size=16))
    np.testing.assert_array_equal(same, images[:, :16, :16])
    with pytest.raises(ValueError, match="expected images"):
        prepare_batch(images[..., 0], PreprocessConfig(image_size=16))


def _inputs_the_long_way(images: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Normalise all three channels, build the mode's channels, then resize (the definition)."""
    from pipeline.io.preprocess import normalize_volume, prepare_batch, select_channels

    x = normalize_volume(images) if config.normalize == "volume" else images
    return prepare_batch(select_channels(x, config.input_mode), config)


@pytest.mark.parametrize("mode", ["rgb", "flair", "flair25d", "adaptive"])
@pytest.mark.parametrize("normalize", ["none", "volume"])
def test_model_inputs_share_work_and_equal_the_definition(mode: str, normalize: str) -> None:
    from pipeline.io.preprocess import model_inputs, patient_inputs

    rng = np.random.default_rng(1)
    images = (rng.random((7, 48, 48, 3)) * (rng.random((7, 48, 48, 3)) > 0.3)).astype(np.float32)
    small = PreprocessConfig(image_size=16, input_mode=mode, normalize=normalize)
    odd = PreprocessConfig(image_size=20, input_mode=mode, normalize=normalize)  # not a divisor
    both = model_inputs(images, (small, odd))
    for config, got in zip((small, odd), both, strict=True):
        np.testing.assert_array_equal(got, _inputs_the_long_way(images, config))
        np.testing.assert_array_equal(patient_inputs(images, config), got)
        assert got.shape == (7, config.image_size, config.image_size, 3)


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_flair25d_channels_are_the_neighbouring_slices(n: int) -> None:
    from pipeline.io.preprocess import select_channels

    images = np.random.default_rng(n).random((n, 4, 4, 3)).astype(np.float32)
    got = select_channels(images, "flair25d")
    assert got.shape == (n, 4, 4, 3) and got.dtype == np.float32
    flair = images[..., 1]
    for k in range(n):  # slice k-1, k, k+1; the first and last slice repeat at the ends
        np.testing.assert_array_equal(got[k, ..., 0], flair[max(k - 1, 0)])
        np.testing.assert_array_equal(got[k, ..., 1], flair[k])
        np.testing.assert_array_equal(got[k, ..., 2], flair[min(k + 1, n - 1)])


@pytest.mark.parametrize("mode", ["rgb", "flair", "flair25d", "adaptive"])
@pytest.mark.parametrize("n", [1, 2, 6])
def test_compact_inputs_expand_to_the_model_inputs_of_any_slices(mode: str, n: int) -> None:
    from pipeline.io.preprocess import compact_inputs, expand_inputs, model_inputs

    images = np.random.default_rng(n).random((n, 24, 24, 3)).astype(np.float32)
    config = PreprocessConfig(image_size=12, input_mode=mode, normalize="volume")
    whole = model_inputs(images, (config,))[0]
    planes = compact_inputs(images, (config,))[0]
    flair_only = mode in ("flair", "flair25d")
    assert planes.shape == (n, 12, 12, 1 if flair_only else 3)  # a third for FLAIR modes
    np.testing.assert_array_equal(expand_inputs(planes, mode), whole)
    rng = np.random.default_rng(0)
    for index in ([0], [n - 1], sorted(rng.choice(n, size=max(n // 2, 1), replace=False)), []):
        got = expand_inputs(planes, mode, index)
        assert got.shape == (len(index), 12, 12, 3)
        np.testing.assert_array_equal(got, whole[list(index)])


@pytest.mark.parametrize("normalize", ["none", "volume"])
@pytest.mark.parametrize("as_uint8", [False, True])
def test_adaptive_reads_flair_alone_where_a_sequence_stands_in(
    normalize: str, as_uint8: bool
) -> None:
    """Slices with all three sequences get them; a slice whose pre- or post-contrast is a copy of
    its FLAIR (a missing sequence, as archives store it) gets FLAIR of slices k-1, k, k+1: exactly
    the "rgb" and "flair25d" inputs of those slices, for any subset of slices asked for."""
    from pipeline.io.preprocess import (
        compact_inputs,
        expand_inputs,
        model_inputs,
        stored_standins,
    )

    rng = np.random.default_rng(7)
    grey = rng.integers(0, 256, size=(7, 40, 40, 3), dtype=np.uint8)
    grey[2, ..., 2] = grey[2, ..., 1]  # post-contrast missing on one slice
    grey[4, ..., 0] = grey[4, ..., 1]  # pre-contrast missing on another
    grey[5, ..., 0] = grey[5, ..., 2] = grey[5, ..., 1]  # both
    images = grey if as_uint8 else grey.astype(np.float32) / np.float32(255.0)
    alone = np.zeros(7, bool)
    alone[[2, 4, 5]] = True
    np.testing.assert_array_equal(stored_standins(images), alone)
    adaptive, rgb, flair25d = (
        PreprocessConfig(16, input_mode=m, normalize=normalize)
        for m in ("adaptive", "rgb", "flair25d")
    )
    got, want_rgb, want_flair = model_inputs(images, (adaptive, rgb, flair25d))
    np.testing.assert_array_equal(got[~alone], want_rgb[~alone])
    np.testing.assert_array_equal(got[alone], want_flair[alone])
    planes = compact_inputs(images, (adaptive,))[0]
    np.testing.assert_array_equal(stored_standins(planes), alone)
    for index in ([0], [2], [5, 6], [1, 4, 5], []):
        np.testing.assert_array_equal(expand_inputs(planes, "adaptive", index), got[index])
    # A patient without post-contrast at all (FLAIR in its place on every slice): FLAIR alone.
    none_post = images.copy()
    none_post[..., 2] = none_post[..., 1]
    got, want = model_inputs(none_post, (adaptive, flair25d))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("normalize", ["none", "volume"])
def test_uint8_grey_levels_give_the_floats_levels_and_inputs(normalize: str) -> None:
    from pipeline.io.preprocess import (
        compact_inputs,
        model_inputs,
        normalize_volume,
        unit_float,
        volume_levels,
    )

    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, size=(11, 40, 40, 3), dtype=np.uint8)
    grey[:, :6] = rng.integers(0, 5, size=(11, 6, 40, 3), dtype=np.uint8)  # background below 0.02
    grey[..., 2] = 0  # a channel with no foreground at all
    floats = grey.astype(np.float32) / np.float32(255.0)
    np.testing.assert_array_equal(unit_float(grey), floats)
    assert unit_float(floats) is floats  # floats pass through uncopied
    assert volume_levels(grey) == volume_levels(floats)
    assert volume_levels(grey)[2] is None
    np.testing.assert_array_equal(normalize_volume(grey), normalize_volume(floats))
    configs = tuple(PreprocessConfig(16, input_mode=m, normalize=normalize)
                    for m in ("rgb", "flair", "flair25d", "adaptive"))  # fmt: skip
    for a, b in zip(model_inputs(floats, configs), model_inputs(grey, configs), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(compact_inputs(floats, configs), compact_inputs(grey, configs), strict=True):
        np.testing.assert_array_equal(a, b)
    rgb = configs[0]
    np.testing.assert_array_equal(prepare_batch(grey, rgb), prepare_batch(floats, rgb))


def test_uint8_levels_are_numpys_percentiles_bit_for_bit() -> None:
    """The histogram path gives `np.percentile`'s figures exactly on many hand-made patients:
    tiny and large samples, few distinct levels (ties at the percentiles), other percentiles."""
    from pipeline.io.preprocess import BACKGROUND_LEVEL, grey_counts, unit_float, volume_levels

    rng = np.random.default_rng(11)
    for trial in range(400):
        n, side = int(rng.integers(1, 6)), int(rng.integers(1, 30))
        if trial % 3 == 0:  # a few levels only: many ties
            grey = (rng.integers(0, 4, (n, side, side, 2)) * 60).astype(np.uint8)
        else:
            grey = rng.integers(0, 256, (n, side, side, 2), dtype=np.uint8)
        low, high = sorted(rng.uniform(0, 100, 2)) if trial % 2 else (1.0, 99.0)
        floats = unit_float(grey)
        want = []
        for c in range(2):
            fg = floats[..., c][floats[..., c] > BACKGROUND_LEVEL]
            pct = np.percentile(fg, [low, high]) if fg.size else None
            want.append(None if pct is None else (float(pct[0]), float(pct[1])))
        assert volume_levels(grey, low, high) == want
    strided = rng.integers(0, 256, (3, 9, 9, 3), dtype=np.uint8)[:, ::2]  # not contiguous
    for c in range(3):
        assert np.array_equal(
            grey_counts(strided, c), np.bincount(strided[..., c].ravel(), minlength=256)
        )
