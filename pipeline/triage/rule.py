"""The triage rule: which slices the classifier may call normal and which go on to the segmenter.

Pure functions over arrays; no I/O, no models. A slice is *normal* when the classifier is at least
`threshold` sure of it (P(normal) ≥ threshold); everything else — positive or uncertain — is sent to
the segmenter, and a segmented slice whose post-processed mask is empty is normal after all.

With a *gate context* of r slices, a slice is normal only when it and every slice within r of it
along z (same patient) are: the gate routes on `context_p_normal`, the least P(normal) in that
window. A tumour spans adjacent slices and the classifier's misses are mostly its thin end slices,
which lie next to slices it does flag; tumour-free slices far from any tumour stay normal. The
operating point is chosen on validation patients with the same context (`pipeline.learn.training`),
and the context is logged with it.
"""

from __future__ import annotations

import numpy as np

ROUTE_NORMAL = "normal"
ROUTE_SEGMENTED = "segmented"
DEFAULT_THRESHOLD = 0.99
#: Largest gate context (slices either side) a model or a run may ask for.
MAX_GATE_CONTEXT = 8


def check_threshold(threshold: float) -> float:
    """Return `threshold` as a float, or raise `ValueError` when it is not in [0, 1]."""
    value = float(threshold)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return value


def check_gate_context(reach: int) -> int:
    """Return `reach` as an int, or raise `ValueError` unless it is in [0, MAX_GATE_CONTEXT]."""
    if isinstance(reach, bool) or int(reach) != reach or not 0 <= reach <= MAX_GATE_CONTEXT:
        raise ValueError(
            f"gate context must be an integer in [0, {MAX_GATE_CONTEXT}], got {reach!r}"
        )
    return int(reach)


def context_p_normal(
    p_normal: np.ndarray, reach: int = 0, groups: np.ndarray | list | None = None
) -> np.ndarray:
    """P(normal) of each slice's neighbourhood: the least over the slices within `reach` along z.

    Args:
        p_normal: `(N,)` P(normal) per slice, each patient's slices in z order.
        reach: slices either side of a slice that count (0 returns `p_normal` as float64).
        groups: `(N,)` patient key per slice when `p_normal` holds several patients (a window
            never crosses into another patient's slices); None = one patient.

    Returns:
        `(N,)` float64. A NaN (a failed prediction) makes its whole window NaN, which
        `route_slices` never calls normal.
    """
    reach = check_gate_context(reach)
    p = np.array(p_normal, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_normal must be 1-D (one value per slice), got shape {p.shape}")
    if reach == 0 or p.size < 2:
        return p
    if groups is None:
        starts = np.array([0])
    else:
        g = np.asarray(groups)
        if g.shape != p.shape:
            raise ValueError(f"groups has shape {g.shape}, p_normal {p.shape}")
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    out = p.copy()
    for a, b in zip(starts, np.r_[starts[1:], p.size], strict=True):
        seg, win = p[a:b], out[a:b]  # np.minimum keeps NaN
        for r in range(1, min(reach, b - a - 1) + 1):
            win[r:] = np.minimum(win[r:], seg[:-r])
            win[:-r] = np.minimum(win[:-r], seg[r:])
    return out


def resolve_gate_context(explicit: int | None, classifier_info: dict | None) -> tuple[int, str]:
    """The gate context of a run and where it came from.

    Args:
        explicit: `--gate-context` as given, or None.
        classifier_info: the loaded classifier's logged config (`LoadedModel.info`).

    Returns:
        `(reach, source)`: the explicit value, else the context the classifier's operating point
        was chosen with, else 0 (a classifier logged before gate contexts existed).
    """
    if explicit is not None:
        return check_gate_context(explicit), "--gate-context"
    logged = (classifier_info or {}).get("gate_context")
    if logged is None or logged == "":
        return 0, "default: none logged with the classifier"
    return check_gate_context(int(float(logged))), "classifier operating point"


def route_slices(p_normal: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Decide which slices go to the segmenter.

    Args:
        p_normal: `(N,)` classifier P(normal) per slice, in [0, 1]. A NaN (a failed prediction) is
            never trusted as normal.
        threshold: P(normal) at or above which a slice is normal, in [0, 1].

    Returns:
        `(N,)` bool, True where the slice is flagged (sent to the segmenter).

    Raises:
        ValueError: `p_normal` is not 1-D, or holds a finite value outside [0, 1], or the threshold
            is outside [0, 1].
    """
    threshold = check_threshold(threshold)
    p = np.asarray(p_normal, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_normal must be 1-D (one value per slice), got shape {p.shape}")
    finite = np.isfinite(p)
    if np.any((p[finite] < 0.0) | (p[finite] > 1.0)):
        raise ValueError("p_normal must lie in [0, 1]")
    # NaN >= t is False, so an unreadable prediction is flagged, never silently called normal.
    return ~(p >= threshold)


def final_labels(flagged: np.ndarray, mask_pixels: np.ndarray) -> np.ndarray:
    """Per-slice outcome after segmentation: tumour only where a flagged slice kept a mask.

    Args:
        flagged: `(N,)` bool from `route_slices`.
        mask_pixels: `(N,)` int, post-processed mask area in pixels (0 for unflagged slices).

    Returns:
        `(N,)` bool, True where the slice ends up with tumour.
    """
    flagged = np.asarray(flagged, dtype=bool)
    mask_pixels = np.asarray(mask_pixels)
    if flagged.shape != mask_pixels.shape:
        raise ValueError(f"shapes differ: flagged {flagged.shape}, mask_pixels {mask_pixels.shape}")
    return flagged & (mask_pixels > 0)


def route_names(flagged: np.ndarray) -> list[str]:
    """`ROUTE_SEGMENTED` for flagged slices, `ROUTE_NORMAL` for the others."""
    return [ROUTE_SEGMENTED if f else ROUTE_NORMAL for f in np.asarray(flagged, dtype=bool)]


def uncertainty(p_normal: np.ndarray) -> float:
    """How close the classifier came to a coin toss on the most ambiguous slice.

    Args:
        p_normal: `(N,)` P(normal) per slice.

    Returns:
        `max(1 - |2p - 1|)` over finite values, in [0, 1] (1 = a slice at exactly 0.5); 0 for none.
    """
    p = np.asarray(p_normal, dtype=np.float64)
    p = p[np.isfinite(p)]
    if p.size == 0:
        return 0.0
    return float(np.max(1.0 - np.abs(2.0 * p - 1.0)))


#: Share of slices sent to the segmenter above which the gate is called bypassed (a warning).
BYPASS_WARNING_SHARE = 0.90


def resolve_threshold(explicit: float | None, classifier_info: dict | None) -> tuple[float, str]:
    """The triage threshold of a run and where it came from.

    Args:
        explicit: `--threshold` as given, or None.
        classifier_info: the loaded classifier's logged config (`LoadedModel.info`).

    Returns:
        `(threshold, source)`: the explicit value ("--threshold"), else the classifier's logged
        validation operating point ("classifier operating point"), else `DEFAULT_THRESHOLD`
        ("default: no operating point logged with the classifier"). An operating point above 1
        (no threshold reaches the sensitivity) is clipped to 1.
    """
    if explicit is not None:
        return check_threshold(explicit), "--threshold"
    op = (classifier_info or {}).get("operating_point")
    try:
        value = float(op)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = float("nan")
    if np.isfinite(value):
        return check_threshold(min(max(value, 0.0), 1.0)), "classifier operating point"
    return DEFAULT_THRESHOLD, "default: no operating point logged with the classifier"


def bypass_warning(segmented: int, slices: int) -> str | None:
    """A warning when the gate sent more than `BYPASS_WARNING_SHARE` of the slices on, else None."""
    if slices <= 0 or segmented / slices <= BYPASS_WARNING_SHARE:
        return None
    return (
        f"the gate sent {segmented} of {slices} slices ({segmented / slices:.0%}) to the "
        f"segmenter: it saves almost nothing at this threshold (above "
        f"{BYPASS_WARNING_SHARE:.0%}); use the classifier's operating point or a lower "
        "--threshold"
    )
