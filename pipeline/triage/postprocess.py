"""Post-processing of segmenter output: threshold, then drop components too small to trust.

Pure array functions. Components are first found per slice (2-D, 8-connected). Then
`fill_holes` closes holes inside each slice's components (an expert's outline of a tumour
has none: the darker, cystic part inside a bright FLAIR rim is tumour too). Then
`remove_isolated_3d` looks across adjacent slices (3-D, 26-connected): a tumour spans several
slices, so a small blob seen on one slice alone is most often a false positive, and a 3-D component
below a size is noise.
"""

from __future__ import annotations

import cv2
import numpy as np

DEFAULT_MIN_COMPONENT = 10
#: A 3-D component seen on one slice only is dropped when its area is below this (native pixels).
DEFAULT_LONE_SLICE_AREA = 200
#: A 3-D component smaller than this many voxels (native pixels summed over slices) is dropped.
DEFAULT_MIN_VOLUME = 100


def threshold_probabilities(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Binarise segmenter probabilities.

    Args:
        prob: `(N, H, W)` or `(N, H, W, 1)` sigmoid output in [0, 1].
        threshold: probability at or above which a pixel is tumour.

    Returns:
        `(N, H, W)` bool.
    """
    p = np.asarray(prob)
    if p.ndim == 4 and p.shape[-1] == 1:
        p = p[..., 0]
    if p.ndim != 3:
        raise ValueError(f"expected (N, H, W) or (N, H, W, 1) probabilities, got shape {p.shape}")
    return p >= threshold


def remove_small_components(masks: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected components smaller than `min_size` pixels, slice by slice.

    Args:
        masks: `(N, H, W)` bool.
        min_size: smallest component kept, in pixels; 0 or 1 keeps everything.

    Returns:
        `(N, H, W)` bool, a subset of `masks`.
    """
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
    out = masks.copy()
    if min_size <= 1:
        return out
    for k in range(out.shape[0]):
        if not out[k].any():
            continue
        # OpenCV's labelling: same 8-connected components as scipy's, ~5x faster, releases the GIL.
        _, labels, stats, _ = cv2.connectedComponentsWithStats(
            out[k].view(np.uint8), connectivity=8, ltype=cv2.CV_32S
        )
        small = stats[:, cv2.CC_STAT_AREA] < min_size
        small[0] = False  # background
        if small.any():
            out[k][small[labels]] = False
    return out


def fill_holes(masks: np.ndarray) -> np.ndarray:
    """Fill the holes of each slice's mask (background not 4-connected to the slice's border,
    as `scipy.ndimage.binary_fill_holes` fills them).

    Args:
        masks: `(N, H, W)` bool.

    Returns:
        `(N, H, W)` bool, a superset of `masks`.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
    out = masks.copy()
    for k in np.flatnonzero(out.any(axis=(1, 2))):
        box = bounding_box(out[k])  # a hole lies inside its component's box
        part = out[k][box]
        # Flood the background from a one-pixel frame around the box: what stays 0 is a hole.
        # OpenCV's flood fill (4-connected) is ~4x faster than scipy's iterated dilation here.
        flood = np.pad(part.view(np.uint8), 1)
        cv2.floodFill(flood, None, (0, 0), 1)
        part |= flood[1:-1, 1:-1] == 0
    return out


def postprocess(
    prob: np.ndarray, threshold: float = 0.5, min_component: int = DEFAULT_MIN_COMPONENT
) -> np.ndarray:
    """Threshold segmenter probabilities and drop small components.

    Args:
        prob: `(N, H, W)` or `(N, H, W, 1)` probabilities in [0, 1].
        threshold: pixel threshold (0.5 by default).
        min_component: smallest kept component in pixels of `prob`'s grid.

    Returns:
        `(N, H, W)` bool masks; a slice whose mask is empty is normal after all.
    """
    return remove_small_components(threshold_probabilities(prob, threshold), min_component)


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Index of the box around `mask`'s true voxels, grown by `margin` on every side (clipped).

    Raises:
        ValueError: an empty mask (it has no box).
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("an empty mask has no bounding box")
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), int(hit[-1]) + margin + 1))
    return tuple(box)


def remove_isolated_3d(
    masks: np.ndarray,
    lone_slice_area: int = DEFAULT_LONE_SLICE_AREA,
    min_volume: int = DEFAULT_MIN_VOLUME,
) -> np.ndarray:
    """Drop 3-D components (26-connected across adjacent slices) that are too small to trust.

    A component is dropped when it lies on a single slice with fewer than `lone_slice_area`
    pixels, or when its total size is below `min_volume` voxels. Slices are assumed to be in
    order, adjacent slices touching (as `load_patient` returns them).

    Args:
        masks: `(N, H, W)` bool, one patient's slices.
        lone_slice_area: smallest kept single-slice component, in pixels (0 keeps them all).
        min_volume: smallest kept component, in voxels (0 keeps them all).

    Returns:
        `(N, H, W)` bool, a subset of `masks`.
    """
    from scipy import ndimage

    if lone_slice_area < 0 or min_volume < 0:
        raise ValueError("lone_slice_area and min_volume must be >= 0")
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
    out = masks.copy()
    if not out.any() or (lone_slice_area == 0 and min_volume == 0):
        return out
    crop = bounding_box(out)  # every component lies inside it: label only there
    labels, count = ndimage.label(out[crop], structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    boxes = ndimage.find_objects(labels)
    drop = np.zeros(count + 1, dtype=bool)
    for i, box in enumerate(boxes, start=1):
        if box is None:
            continue
        one_slice = box[0].stop - box[0].start == 1
        drop[i] = sizes[i] < min_volume or (one_slice and sizes[i] < lone_slice_area)
    if drop.any():
        out[crop][drop[labels]] = False
    return out
