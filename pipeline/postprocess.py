"""Post-processing of segmenter output: threshold, then drop components too small to trust.

Pure array functions. Components are found per slice (2-D, 8-connected): the segmenter sees one
axial slice at a time, so a 3-D component would join islands the model never related.
"""

from __future__ import annotations

import cv2
import numpy as np

DEFAULT_MIN_COMPONENT = 10


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
