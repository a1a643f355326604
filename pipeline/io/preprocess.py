"""Pure array transforms between archive pixels and model inputs, with the inverses masks need.

Everything here is array in, array out: no file I/O, no globals. Images are `(H, W, 3)` or
`(N, H, W, 3)` float32 in [0, 1], channel order (pre-contrast/T1, FLAIR, post-contrast/T1ce), or
the same as uint8 grey levels as an 8-bit TIF stores them (`load_patient(..., as_uint8=True)`),
which every function here takes as `unit_float` makes them: the same floats, converted a few
slices at a time by the functions that work a patient in chunks; masks are `(H, W)` or
`(N, H, W)` bool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

#: Channel order of every image in memory (the Kaggle LGG TIFs' own order).
CHANNEL_ORDER = ("t1", "flair", "t1ce")
#: What the model's three input channels hold: "rgb" (T1, FLAIR, T1ce as stored, the paper's),
#: "flair" (FLAIR x3: needs FLAIR alone), "flair25d" (FLAIR of slices k-1, k, k+1: FLAIR alone
#: plus the neighbouring slices as context) or "adaptive" (per slice: T1, FLAIR, T1ce where all
#: three sequences are stored, FLAIR of slices k-1, k, k+1 where FLAIR stands in for a missing one,
#: as the Kaggle archive stores it and the readers assemble it; see `stored_standins`).
INPUT_MODES = ("rgb", "flair", "flair25d", "adaptive")
#: Intensity normalisation before the model: "none" (TIF / 255, NIfTI per-volume percentiles, as
#: loaded) or "volume" (every channel re-scaled to percentiles of the patient's own foreground, so
#: an 8-bit TIF series and a raw or z-scored NIfTI volume look alike).
NORMALIZATIONS = ("none", "volume")
#: Pixels at or below this [0, 1] intensity are background for the "volume" normalisation.
BACKGROUND_LEVEL = 0.02


@dataclass(frozen=True)
class PreprocessConfig:
    """How archive pixels become model inputs; logged with every model.

    Attributes:
        image_size: model input height and width in pixels (square).
        channels: number of input channels (3: pre-contrast, FLAIR, post-contrast).
        low_percentile: lower clip percentile of a NIfTI volume's foreground voxels.
        high_percentile: upper clip percentile of a NIfTI volume's foreground voxels.
        input_mode: what the three input channels hold (`INPUT_MODES`).
        normalize: intensity normalisation per patient (`NORMALIZATIONS`).
    """

    image_size: int = 256
    channels: int = 3
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    input_mode: str = "rgb"
    normalize: str = "none"

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.channels != 3:
            raise ValueError(f"channels must be 3 {CHANNEL_ORDER}, got {self.channels}")
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise ValueError(
                "need 0 <= low_percentile < high_percentile <= 100, got "
                f"{self.low_percentile}, {self.high_percentile}"
            )
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {self.input_mode!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")

    @property
    def reads_flair_only(self) -> bool:
        """Whether the model's inputs come from FLAIR alone (the "flair" and "flair25d" modes)."""
        return self.input_mode in ("flair", "flair25d")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Rebuild from `to_dict()` output; unknown keys (newer versions) are ignored."""
        known = {f.name: f.type for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("input_mode", "normalize"):
                kwargs[key] = str(value)
            elif key in known:
                kwargs[key] = float(value) if "percentile" in key else int(value)
        return cls(**kwargs)


def unit_float(images: np.ndarray) -> np.ndarray:
    """`images` as float32 in [0, 1]: uint8 grey levels divided by 255 (the one conversion of
    8-bit pixels, so converting a patient whole or a few slices at a time gives the same floats);
    anything else as float32 (no copy when it already is)."""
    if images.dtype == np.uint8:
        out = images.astype(np.float32)
        np.divide(out, np.float32(255.0), out=out)  # in place: no second float copy
        return out
    return np.asarray(images, dtype=np.float32)


def normalize_intensity(
    volume: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5
) -> np.ndarray:
    """Clip a raw MRI volume to percentiles of its foreground and scale it to [0, 1].

    The foreground is every voxel above the volume's minimum (the background of raw MRI is 0,
    that of z-scored volumes a constant negative value). The percentiles are order statistics
    ("lower"/"higher", no interpolation). A volume whose values already lie in [0, 1] is taken
    as normalised and returned unchanged, so normalising twice equals normalising once.

    Args:
        volume: any shape, any real dtype (int16 raw, float32 z-scored, float64, ...).
        low_percentile: percentile of the foreground mapped to 0.
        high_percentile: percentile of the foreground mapped to 1.

    Returns:
        float32 array of the same shape, values in [0, 1]; the background maps to 0.
    """
    x = np.asarray(volume, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    finite = np.isfinite(x)
    if not finite.all():
        x = np.where(finite, x, np.float32(np.nanmin(np.where(finite, x, np.inf))))
    x_min, x_max = float(x.min()), float(x.max())
    if x_min >= 0.0 and x_max <= 1.0:
        return x.copy()
    foreground = x[x > x_min]
    if foreground.size == 0:
        return np.zeros_like(x)
    lo = float(np.percentile(foreground, low_percentile, method="lower"))
    hi = float(np.percentile(foreground, high_percentile, method="higher"))
    if hi <= lo:
        return (x > x_min).astype(np.float32)
    out = (x - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def assemble_channels(
    flair: np.ndarray, t1: np.ndarray | None = None, t1ce: np.ndarray | None = None
) -> np.ndarray:
    """Stack sequences into the (T1, FLAIR, T1ce) channel order.

    A missing sequence is replaced by FLAIR, as the Kaggle LGG set itself does for patients
    without post-contrast or pre-contrast scans; FLAIR alone gives three identical channels.

    Args:
        flair: `(...)` array, any spatial shape.
        t1: same shape as `flair`, or None.
        t1ce: same shape as `flair`, or None.

    Returns:
        `(..., 3)` array, dtype of `flair`.
    """
    parts = [flair if t1 is None else t1, flair, flair if t1ce is None else t1ce]
    for name, part in zip(CHANNEL_ORDER, parts, strict=True):
        if part.shape != flair.shape:
            raise ValueError(f"{name} shape {part.shape} differs from FLAIR shape {flair.shape}")
    return np.stack(parts, axis=-1).astype(flair.dtype, copy=False)


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize images with area interpolation (averaging when shrinking).

    Args:
        image: `(H, W)`, `(H, W, C)` or `(N, H, W, C)` float32.
        size: output side in pixels, or `(height, width)`.

    Returns:
        float32 array with H, W replaced by the new size.
    """
    h, w = _size_hw(size)
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 4:
        if x.shape[1:3] == (h, w):
            return x.copy()
        return np.stack([resize_image(one, (h, w)) for one in x]) if len(x) else x.copy()
    if x.shape[:2] == (h, w):
        return x.copy()
    out = cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA)
    if x.ndim == 3 and out.ndim == 2:  # OpenCV drops a single channel axis
        out = out[..., None]
    return out.astype(np.float32, copy=False)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize masks with exact nearest-neighbour sampling (labels never blend).

    Args:
        mask: `(H, W)` or `(N, H, W)` bool, or numbers where > 0.5 is tumour.
        size: output side in pixels, or `(height, width)`.

    Returns:
        bool array with H, W replaced by the new size.
    """
    h, w = _size_hw(size)
    m = np.asarray(mask)
    binary = (m > 0.5) if m.dtype != bool else m
    if binary.ndim == 3:
        if binary.shape[1:] == (h, w):
            return binary.copy()
        return (
            np.stack([resize_mask(one, (h, w)) for one in binary])
            if len(binary)
            else np.zeros((0, h, w), dtype=bool)
        )
    if binary.shape == (h, w):
        return binary.copy()
    out = cv2.resize(binary.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return out.astype(bool)


def restore_mask(mask: np.ndarray, native_hw: tuple[int, int]) -> np.ndarray:
    """Inverse of resizing: a model-size `(S, S)` mask back to the native `(H, W)` (nearest)."""
    return resize_mask(mask, native_hw)


def restore_masks(masks: np.ndarray, native_hw: tuple[int, int]) -> np.ndarray:
    """Batch form of `restore_mask`: `(N, S, S)` bool/float (> 0.5) → `(N, H, W)` bool."""
    m = np.asarray(masks)
    if m.ndim == 4 and m.shape[-1] == 1:  # a segmenter's (N, S, S, 1) output
        m = m[..., 0]
    if m.ndim != 3:
        raise ValueError(f"expected masks of shape (N, S, S), got {m.shape}")
    return resize_mask(m, native_hw)


def prepare_batch(images: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Images in [0, 1] at native size → model input `(N, S, S, 3)` float32 (area resize).

    Args:
        images: `(N, H, W, 3)` float32 in [0, 1] (as `load_patient` returns them).
        config: the model's preprocessing (`image_size` S).

    Returns:
        `(N, S, S, 3)` float32 in [0, 1].
    """
    x = unit_float(images)
    if x.ndim != 4 or x.shape[-1] != config.channels:
        raise ValueError(f"expected images (N, H, W, {config.channels}), got {x.shape}")
    out = resize_image(x, config.image_size)
    return np.clip(out, 0.0, 1.0, out=out)


#: Pixels of one channel up to which OpenCV's float32 histogram counts are exact (2^24).
_EXACT_HIST_PIXELS = 1 << 24


def grey_counts(images: np.ndarray, channel: int) -> np.ndarray:
    """`(256,)` int64 counts of each grey level of `images[..., channel]` (uint8 `(N, H, W, C)`).

    OpenCV's histogram (a tenth of `np.bincount`'s time, which widens every pixel to 64 bits
    first) while its float32 counts are exact; `np.bincount` beyond that or for strided arrays.
    """
    n, h, w, c = images.shape
    if images.flags.c_contiguous and n * h * w <= _EXACT_HIST_PIXELS and c <= 512:
        hist = cv2.calcHist([images.reshape(n * h, w, c)], [channel], None, [256], [0, 256])
        return hist.ravel().astype(np.int64)
    return np.bincount(images[..., channel].ravel(), minlength=256).astype(np.int64)


def _histogram_percentiles(
    counts: np.ndarray, values: np.ndarray, qs: Sequence[float]
) -> list[float]:
    """`np.percentile` (its default "linear" method) of the sample holding `counts[v]` copies of
    `values[v]`, `values` ascending float32, computed from the counts alone.

    The same arithmetic as numpy's: the virtual index `(n - 1) q`, its two neighbours' values
    (float32) and numpy's lerp (`a + (b - a) g`, or `b - (b - a)(1 - g)` from g = 0.5), so the
    figures are numpy's bit for bit (`tests/test_preprocess.py` checks it against `np.percentile`).
    """
    n = int(counts.sum())
    ends = np.cumsum(counts)
    out = []
    for q in qs:
        virtual = (n - 1) * (np.float64(q) / 100)
        below = np.floor(virtual)
        gamma = virtual - below
        i0, i1 = (int(min(max(i, 0), n - 1)) for i in (below, below + 1))
        a, b = (values[int(np.searchsorted(ends, i, side="right"))] for i in (i0, i1))
        diff = b - a
        out.append(float(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma))
    return out


def volume_levels(
    images: np.ndarray, low: float = 1.0, high: float = 99.0
) -> list[tuple[float, float] | None]:
    """Per channel, the `low`/`high` percentiles of one patient's foreground (pixels above
    `BACKGROUND_LEVEL`); None for a channel with no foreground. See `normalize_volume`.

    uint8 images give the same levels as their `unit_float` floats without a float copy of the
    patient: only the counts of the 256 grey levels are taken (`grey_counts`), and the percentiles
    are read off them exactly as `np.percentile` computes them on the foreground's floats.
    """
    images = np.asarray(images)
    levels: list[tuple[float, float] | None] = []
    if images.dtype == np.uint8:
        lut = unit_float(np.arange(256, dtype=np.uint8))
        foreground = lut > BACKGROUND_LEVEL
        for c in range(images.shape[-1]):
            counts = np.where(foreground, grey_counts(images, c), 0)
            if not counts.any():
                levels.append(None)
                continue
            lo, hi = _histogram_percentiles(counts, lut, (low, high))
            levels.append((lo, hi))
        return levels
    x = np.asarray(images, dtype=np.float32)
    for c in range(x.shape[-1]):
        ch = x[..., c]
        fg = ch > BACKGROUND_LEVEL
        if not fg.any():
            levels.append(None)
            continue
        # Our own copy of the foreground: percentile may partition it in place (no second copy).
        lo, hi = np.percentile(ch[fg], [low, high], overwrite_input=True)
        levels.append((float(lo), float(hi)))
    return levels


def apply_levels(
    images: np.ndarray, levels: Sequence[tuple[float, float] | None], out: np.ndarray | None = None
) -> np.ndarray:
    """Map each channel's `levels` (from `volume_levels`) to 0 and 1, clipped; background stays 0.

    Works on any run of a patient's slices, so a caller can normalise a patient a few slices at a
    time with the levels of all of them (the same pixels as normalising it whole).
    """
    x = unit_float(images)
    if out is None:
        out = np.zeros_like(x)
    else:
        out[...] = 0.0
    for c, level in enumerate(levels):
        if level is None:
            continue
        lo, hi = level
        ch = x[..., c]
        o = out[..., c]  # computed in place: no full-size temporaries
        np.subtract(ch, np.float32(lo), out=o)
        np.divide(o, np.float32(max(hi - lo, 1e-6)), out=o)
        np.clip(o, 0.0, 1.0, out=o)
        o[~(ch > BACKGROUND_LEVEL)] = 0.0
    return out


def level_table(
    levels: Sequence[tuple[float, float] | None] | None, channels: int
) -> np.ndarray | None:
    """`(256, channels)` float32: `apply_levels` of each uint8 grey level (None without levels).

    `table[grey, c]` is exactly what `apply_levels` gives a pixel of that grey level in channel
    `c` (the same float32 arithmetic on the same value), so a lookup replaces the per-pixel work.
    """
    if levels is None:
        return None
    grey = np.repeat(np.arange(256, dtype=np.uint8)[:, None], channels, axis=1)
    return apply_levels(grey[None, None], levels)[0, 0]


def normalize_volume(images: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Re-scale every channel of one patient's slices to percentiles of its own foreground.

    The foreground of a channel is every pixel above `BACKGROUND_LEVEL`; its `low`/`high`
    percentiles map to 0 and 1 (clipped), and the background stays 0. An 8-bit TIF series windowed
    by its exporter and a NIfTI volume normalised on loading then share one intensity scale.
    Idempotent up to rounding (a second pass finds the same percentiles at ~0 and ~1).

    Args:
        images: `(N, H, W, C)` float32 in [0, 1], one patient's slices.
        low: foreground percentile mapped to 0.
        high: foreground percentile mapped to 1.

    Returns:
        `(N, H, W, C)` float32 in [0, 1].
    """
    return apply_levels(images, volume_levels(images, low, high))


def select_channels(images: np.ndarray, mode: str) -> np.ndarray:
    """Build the model's three channels from one patient's (T1, FLAIR, T1ce) slices.

    Args:
        images: `(N, H, W, 3)` float32, the patient's slices in slice order (neighbours adjacent).
        mode: one of `INPUT_MODES`; "flair25d" repeats the first/last slice at the volume's ends.

    Returns:
        `(N, H, W, 3)` float32.
    """
    if mode not in INPUT_MODES:
        raise ValueError(f"mode must be one of {INPUT_MODES}, got {mode!r}")
    if mode == "rgb":
        return unit_float(images)
    if mode == "adaptive":
        x = np.array(unit_float(images), dtype=np.float32)  # a copy: stand-ins are written in
        alone = stored_standins(images)
        x[alone, ..., 0] = x[alone, ..., 1]
        x[alone, ..., 2] = x[alone, ..., 1]
        return expand_inputs(x, mode)
    return expand_inputs(unit_float(images[..., 1:2]), mode)  # FLAIR: one plane


def patient_inputs(images: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """One patient's slices → model inputs: normalise, choose channels, resize.

    This is the one place training and triage turn a patient's pixels into model inputs. It works
    on a whole patient (slices in order), because the "volume" normalisation and the "flair25d"
    neighbours need the other slices.

    Args:
        images: `(N, H, W, 3)` float32 in [0, 1] (as `load_patient` returns them), slice order.
        config: the model's preprocessing.

    Returns:
        `(N, S, S, 3)` float32 in [0, 1].
    """
    return model_inputs(images, (config,))[0]


#: Slices normalised at a time at native size by `model_inputs` (bounds its temporaries).
CHUNK_SLICES = 8


def model_inputs(images: np.ndarray, configs: Sequence[PreprocessConfig]) -> tuple[np.ndarray, ...]:
    """`patient_inputs` for several models' preprocessing at once, sharing the native-size work
    (normalisation) between models that normalise the same channels the same way.

    Per model: choose the channels it uses, normalise them, resize, then build its three input
    channels at model size (resizing is per channel, so building them after resizing gives the
    same pixels as before it, with a third of the resizing for the FLAIR modes). The "volume"
    normalisation takes its levels from the whole patient, then normalises and resizes
    `CHUNK_SLICES` slices at a time: the same pixels as normalising the patient whole, without a
    second native-size copy of it.

    Returns:
        One `(N, S, S, 3)` float32 array in [0, 1] per config, in order.
    """
    planes = compact_inputs(images, configs)
    return tuple(expand_inputs(p, c.input_mode) for p, c in zip(planes, configs, strict=True))


def compact_inputs(
    images: np.ndarray, configs: Sequence[PreprocessConfig]
) -> tuple[np.ndarray, ...]:
    """`model_inputs` before the three channels are built: per config `(N, S, S, 1)` (FLAIR at
    model size, for the FLAIR modes) or `(N, S, S, 3)` ("rgb"), float32 in [0, 1].

    A FLAIR mode's input is a third of the size this way; `expand_inputs` builds the channels of
    the slices a model is about to see. uint8 `images` are converted `CHUNK_SLICES` at a time
    (the same inputs as from their floats, without a float copy of the patient at native size).
    """
    x = images if images.dtype == np.uint8 else np.asarray(images, dtype=np.float32)
    for config in configs:
        if x.ndim != 4 or x.shape[-1] != config.channels:
            raise ValueError(f"expected images (N, H, W, {config.channels}), got {x.shape}")
    smalls: dict[int, np.ndarray] = {}
    groups: dict[tuple[bool, str], list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault((config.reads_flair_only, config.normalize), []).append(i)
    for (flair_only, normalize), members in groups.items():
        planes = x[..., 1:2] if flair_only else x
        levels = volume_levels(planes) if normalize == "volume" and len(planes) else None
        for i in members:
            size = configs[i].image_size
            smalls[i] = np.empty((len(planes), size, size, planes.shape[-1]), np.float32)
        # uint8 grey levels with levels: each channel's normalised value is a function of its
        # 256 grey levels, so `apply_levels` runs once on them and the pixels are looked up.
        table = level_table(levels, planes.shape[-1]) if planes.dtype == np.uint8 else None
        scratch: np.ndarray | None = None
        for start in range(0, len(planes), CHUNK_SLICES):
            part = planes[start : start + CHUNK_SLICES]
            if levels is not None:
                if scratch is None or len(scratch) != len(part):
                    scratch = np.empty(part.shape, np.float32)
                if table is not None:
                    for c in range(part.shape[-1]):
                        scratch[..., c] = table[part[..., c], c]
                    chunk = scratch
                else:
                    chunk = apply_levels(part, levels, out=scratch)
            else:
                chunk = unit_float(part)
            for i in members:
                smalls[i][start : start + len(chunk)] = resize_image(chunk, configs[i].image_size)
    standin = None
    out = []
    for i in range(len(configs)):
        small = smalls.pop(i)
        np.clip(small, 0.0, 1.0, out=small)
        if configs[i].input_mode == "adaptive" and len(small):
            if standin is None:
                standin = stored_standins(x)
            # A stand-in sequence becomes exactly the FLAIR plane, whatever its own levels were,
            # so `expand_inputs` sees it (`stored_standins`) in the compact array alone.
            small[standin, ..., 0] = small[standin, ..., 1]
            small[standin, ..., 2] = small[standin, ..., 1]
        out.append(small)
    return tuple(out)


def stored_standins(images: np.ndarray) -> np.ndarray:
    """`(N,)` bool: the slices of `(N, H, W, 3)` (T1, FLAIR, T1ce) pixels whose T1 or T1ce is a
    copy of their FLAIR, as the Kaggle LGG archive stores a missing sequence and the NIfTI and
    DICOM readers fill one a source lacks (an all-black slice counts too). The same check finds
    them in a compact "adaptive" array, where `compact_inputs` wrote FLAIR into the stand-ins."""
    x = np.asarray(images)
    flair = x[..., 1]
    same_pre = np.all(x[..., 0] == flair, axis=(1, 2))
    same_post = np.all(x[..., 2] == flair, axis=(1, 2))
    return np.asarray(same_pre | same_post, dtype=bool)


def expand_inputs(
    planes: np.ndarray, mode: str, index: np.ndarray | Sequence[int] | None = None
) -> np.ndarray:
    """Model inputs `(len(index), S, S, 3)` of the slices `index` (all when None) from
    `compact_inputs`' array for input mode `mode` (an "rgb" array is returned as it is, or its
    rows). "flair25d" takes the neighbours from the whole patient, so slice k's channels are the
    same whichever slices are asked for.
    """
    if mode not in INPUT_MODES:
        raise ValueError(f"mode must be one of {INPUT_MODES}, got {mode!r}")
    n = len(planes)
    idx = np.arange(n) if index is None else np.asarray(index, dtype=np.int64)
    if mode == "adaptive":
        return _adaptive_inputs(planes, idx)
    if mode == "rgb" or planes.shape[-1] == 3:
        return planes if index is None else planes[idx]
    flair = planes[..., 0]
    out = np.empty((len(idx), *flair.shape[1:], 3), np.float32)
    if not len(idx):
        return out
    out[..., 1] = flair[idx]
    if mode == "flair":
        out[..., 0] = out[..., 2] = out[..., 1]
    else:
        before, after = _neighbours(idx, n)
        out[..., 0] = flair[before]
        out[..., 2] = flair[after]
    return out


def _neighbours(idx: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Slices k-1 and k+1 of each slice k in `idx` of an `n`-slice volume, the first and last
    repeated at the volume's ends."""
    return np.maximum(idx - 1, 0), np.minimum(idx + 1, n - 1)


def _adaptive_inputs(planes: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """ "adaptive" inputs of slices `idx` from a compact `(N, S, S, 3)` array: the three sequences
    where they are stored, FLAIR of slices k-1, k, k+1 where a stand-in is (`stored_standins`)."""
    if planes.ndim != 4 or planes.shape[-1] != 3:
        raise ValueError(f"'adaptive' needs (N, S, S, 3) planes, got {planes.shape}")
    out = planes[idx]  # a copy (fancy indexing)
    if not len(idx):
        return out
    alone = stored_standins(out)
    if alone.any():
        before, after = _neighbours(idx[alone], len(planes))
        out[alone, ..., 0] = planes[before, ..., 1]
        out[alone, ..., 2] = planes[after, ..., 1]
    return out


def flair_neighbours(planes: np.ndarray) -> np.ndarray:
    """`(N, S, S, 2)`: FLAIR of slices k-1 and k+1 for each slice of a compact `(N, S, S, 3)`
    array (the first and last repeated at the volume's ends): what "adaptive" training shows in
    place of the other sequences on a share of its slices."""
    flair = planes[..., 1]
    before, after = _neighbours(np.arange(len(planes)), len(planes))
    return np.stack([flair[before], flair[after]], axis=-1)
