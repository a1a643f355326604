"""The data behind a report's slice viewer: every slice as a small JPEG, outlines as polygons.

Pure (arrays in, JSON-ready dicts and bytes out). The FLAIR image is embedded once per slice
(grayscale JPEG at native size, or downsampled to `max_edge`); predicted and ground-truth outlines
are contour polygons in native pixel coordinates, drawn by the page's own JavaScript, so they stay
sharp at any zoom and cost a few bytes per slice. OpenCV encodes (~0.2 ms per 256 px slice).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from pipeline.triage.records import SliceRecord
from pipeline.triage.rule import ROUTE_SEGMENTED

#: Longest image edge embedded per slice (native size when smaller).
MAX_EDGE = 256
JPEG_QUALITY = 80
THUMB_EDGE = 96
THUMB_NAME = "thumb.jpg"
_RED, _CYAN = (48, 48, 255), (255, 220, 0)  # BGR


def gray_u8(flair: np.ndarray) -> np.ndarray:
    """FLAIR in [0, 1] (any shape) as display grey levels; uint8 input is already that."""
    if flair.dtype == np.uint8:
        return flair
    if flair.ndim == 3:  # a stack: a slice at a time, no float temporaries of the whole stack
        out = np.empty(flair.shape, np.uint8)
        for i in range(len(flair)):
            out[i] = gray_u8(flair[i])
        return out
    g = np.nan_to_num(np.asarray(flair, dtype=np.float32)) * 255.0
    return np.clip(g, 0, 255).astype(np.uint8)


def _fit(img: np.ndarray, edge: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = edge / max(h, w)
    if scale >= 1.0:
        return img
    size = (max(round(w * scale), 1), max(round(h * scale), 1))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _jpeg(img: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode a slice as JPEG")
    return bytes(buf)


def outline_polygons(mask: np.ndarray) -> list[list[int]]:
    """Contours of a 2-D mask (outer borders and holes) as flat `[x0, y0, x1, y1, ...]` lists."""
    m = np.ascontiguousarray(np.asarray(mask, dtype=np.uint8))
    if not m.any():
        return []
    contours, _ = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(int).tolist() for c in contours]


def viewer_data(
    flair: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray | None,
    records: Sequence[SliceRecord],
    max_edge: int = MAX_EDGE,
) -> dict[str, Any]:
    """Everything the slice viewer draws, one entry per slice.

    Args:
        flair: `(n, H, W)` float in [0, 1], or its grey levels (uint8, `gray_u8`).
        pred: `(n, H, W)` bool, the predicted mask on the native grid.
        gt: `(n, H, W)` bool ground truth, or None when the archive has no masks.
        records: the report's slice records (`pipeline.triage.report.slice_records`).
        max_edge: longest embedded image edge.

    Returns:
        `w`, `h` (native grid), `start` (index of the largest finding, else the middle slice),
        `images` (base64 JPEG), `pred` and `gt` (polygons per slice; `gt` None without masks),
        and `slices`: `SliceRecord.to_dict()` per slice.
    """
    n, h, w = np.asarray(pred).shape
    jpegs = [_jpeg(_fit(gray_u8(flair[i]), max_edge)) for i in range(n)]
    images = [base64.b64encode(b).decode("ascii") for b in jpegs]
    px = [r.mask_pixels for r in records]
    start = int(np.argmax(px)) if any(px) else n // 2
    return {
        "w": int(w),
        "h": int(h),
        "start": start,
        "images": images,
        "pred": [outline_polygons(pred[i]) for i in range(n)],
        "gt": None if gt is None else [outline_polygons(gt[i]) for i in range(n)],
        "slices": [r.to_dict() for r in records],
    }


def review_lists(records: Sequence[SliceRecord]) -> dict[str, list[int]]:
    """Slices a reader should look at twice.

    Returns:
        `gate_dropped`: tumour in the ground truth on slices the classifier called normal (empty
        without masks); `disagree`: slices the classifier flagged where the segmenter found nothing.
    """
    dropped = [r.slice for r in records if (r.gt_pixels or 0) > 0 and r.route != ROUTE_SEGMENTED]
    disagree = [r.slice for r in records if r.route == ROUTE_SEGMENTED and r.mask_pixels == 0]
    return {"gate_dropped": dropped, "disagree": disagree}


def thumbnail(flair: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None) -> bytes:
    """A small JPEG of one slice with the predicted outline (red) and ground truth (cyan)."""
    img = cv2.cvtColor(gray_u8(flair), cv2.COLOR_GRAY2BGR)
    for mask, colour in ((gt, _CYAN), (pred, _RED)):
        if mask is not None and np.asarray(mask).any():
            polys = [np.asarray(p, np.int32).reshape(-1, 1, 2) for p in outline_polygons(mask)]
            cv2.polylines(img, polys, True, colour, max(1, img.shape[0] // 96))
    return _jpeg(_fit(img, THUMB_EDGE), 85)
