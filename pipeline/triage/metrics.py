"""Evaluation metrics: classification, calibration, triage operating point, Dice/IoU, HD95.

numpy, with scipy and OpenCV for HD95's surfaces and distances.

Conventions: `y_true` is `(N,)` 0/1 with 1 = tumour slice; `p_tumour` is `(N,)` float in [0, 1]
(column 1 of the classifier's softmax); `p_normal = 1 - p_tumour` (column 0). The triage rule
calls a slice *normal* when `p_normal >= threshold` (`pipeline.triage.rule.DEFAULT_THRESHOLD` by
default); every other slice goes to the segmenter. Masks are `(N, H, W)` bool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.triage.rule import DEFAULT_THRESHOLD as TRIAGE_THRESHOLD  # the routing rule's default

MIN_SENSITIVITY = 0.98


def _binary(y: Any) -> np.ndarray:
    return np.asarray(y).astype(bool).ravel()


def _probs(p: Any) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64).ravel()
    if arr.size and (np.nanmin(arr) < 0.0 or np.nanmax(arr) > 1.0):
        raise ValueError("probabilities must lie in [0, 1]")
    return arr


def _ratio(num: Any, den: Any) -> float:
    return float(num) / float(den) if den else float("nan")


def confusion(y_true: Any, y_pred: Any) -> dict[str, int]:
    """Binary confusion counts.

    Args:
        y_true: `(N,)` 0/1 truth (1 = tumour).
        y_pred: `(N,)` 0/1 prediction.

    Returns:
        `{"tn", "fp", "fn", "tp"}` as ints.
    """
    t, p = _binary(y_true), _binary(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in length")
    return {
        "tn": int(np.sum(~t & ~p)),
        "fp": int(np.sum(~t & p)),
        "fn": int(np.sum(t & ~p)),
        "tp": int(np.sum(t & p)),
    }


def roc_curve(y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of a score where larger means tumour.

    Returns:
        `(fpr, tpr, thresholds)`, each `(K,)`, starting at (0, 0) with threshold +inf; a slice is
        called positive when `score >= threshold`. Empty arrays when one class is absent.
    """
    t, s = _binary(y_true), np.asarray(score, dtype=np.float64).ravel()
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return np.array([]), np.array([]), np.array([])
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    # Keep only the last index of each run of tied scores.
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(t)[last]
    fps = (last + 1) - tps
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(y_true: Any, score: Any) -> float:
    """Area under the ROC curve (ties count half); NaN when one class is absent."""
    fpr, tpr, _ = roc_curve(y_true, score)
    if fpr.size == 0:
        return float("nan")
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def reliability(y_true: Any, p_tumour: Any, n_bins: int = 10) -> dict[str, list[float]]:
    """Reliability-diagram data for P(tumour) in equal-width bins over [0, 1].

    Returns:
        `{"bin_lower", "bin_upper", "confidence" (mean P(tumour) in the bin), "frequency" (fraction
        of tumour slices in the bin), "count"}`, one entry per bin; NaN confidence/frequency for
        empty bins.
    """
    t, p = _binary(y_true), _probs(p_tumour)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=True), 0, n_bins - 1)
    conf, freq, count = [], [], []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        count.append(float(n))
        conf.append(float(p[sel].mean()) if n else float("nan"))
        freq.append(float(t[sel].mean()) if n else float("nan"))
    return {
        "bin_lower": edges[:-1].tolist(),
        "bin_upper": edges[1:].tolist(),
        "confidence": conf,
        "frequency": freq,
        "count": count,
    }


def expected_calibration_error(y_true: Any, p_tumour: Any, n_bins: int = 10) -> float:
    """ECE of P(tumour): sum over bins of (bin share) x |mean P(tumour) - tumour fraction|."""
    rel = reliability(y_true, p_tumour, n_bins)
    n = sum(rel["count"])
    if n == 0:
        return float("nan")
    return float(
        sum(
            c / n * abs(conf - freq)
            for c, conf, freq in zip(rel["count"], rel["confidence"], rel["frequency"], strict=True)
            if c
        )
    )


def triage_sensitivity(y_true: Any, p_normal: Any, threshold: float = TRIAGE_THRESHOLD) -> float:
    """Share of tumour slices NOT called normal by `p_normal >= threshold` (NaN if none)."""
    t, pn = _binary(y_true), _probs(p_normal)
    return _ratio(np.sum(t & (pn < threshold)), np.sum(t))


def operating_point(
    y_true: Any,
    p_normal: Any,
    min_sensitivity: float = MIN_SENSITIVITY,
    min_saved: float | None = None,
) -> dict[str, float]:
    """The triage threshold that routes the most slices as normal while keeping sensitivity.

    Sensitivity of the rule `p_normal >= t -> normal` never falls as `t` grows, so every `t` above
    some `t*` keeps it at or above `min_sensitivity`. Read literally, "the largest threshold keeping
    sensitivity" is always 1; the useful operating point is `t*`, the least stringent such
    threshold (the one that spares the segmenter the most slices), which is returned. At most
    `floor((1 - min_sensitivity) * P)` of the P tumour slices may be called normal; `t*` is the next
    float32 above the P(normal) of the first tumour slice that must stay flagged. A value above 1
    means no threshold in [0, 1] reaches it.

    With `min_saved` (a share of slices), the calls-saved target is spent on sensitivity: the
    strictest threshold that still calls at least that share of these slices normal is returned
    when it is stricter than `t*` (never a less strict one: sensitivity comes first). On held-out
    LGG patients the share saved moved little with the threshold while sensitivity moved a lot,
    and the share rests on every validation slice where `t*` rests on the few least certain tumour
    slices (docs/ACCURACY.md, fold 4).

    Args:
        y_true: `(N,)` 0/1 truth of validation slices (1 = tumour).
        p_normal: `(N,)` P(normal) of those slices.
        min_sensitivity: slice-level sensitivity to keep.
        min_saved: share of slices to keep calling normal while raising the threshold above `t*`;
            None = `t*`.

    Returns:
        `{"threshold", "sensitivity", "specificity", "normal_fraction", "sensitivity_threshold"}`
        at the chosen threshold on these slices (`sensitivity_threshold` = `t*`); all NaN when
        there is no tumour slice.
    """
    t, pn = _binary(y_true), _probs(p_normal)
    nan = float("nan")
    pos = np.sort(pn[t])[::-1]
    if pos.size == 0:
        return {
            "threshold": nan,
            "sensitivity": nan,
            "specificity": nan,
            "normal_fraction": nan,
            "sensitivity_threshold": nan,
        }
    allowed = int(np.floor((1.0 - min_sensitivity) * pos.size + 1e-9))
    t_star = 0.0
    if allowed < pos.size:
        # The smallest float32 strictly above that slice's P(normal), so float32 scores compare
        # right.
        t32 = np.float32(pos[allowed])
        if float(t32) <= pos[allowed]:
            t32 = np.nextafter(t32, np.float32(np.inf))
        t_star = float(t32)
    thr = t_star
    if min_saved is not None:
        if not 0.0 <= min_saved <= 1.0:
            raise ValueError(f"min_saved must be in [0, 1], got {min_saved}")
        scores = np.sort(pn[np.isfinite(pn)])[::-1]
        keep = int(np.ceil(min_saved * pn.size - 1e-9))  # slices that must stay called normal
        if 0 < keep <= scores.size:
            # The largest float32 at or below the keep-th highest P(normal): at least `keep`
            # slices stay at or above it.
            s32 = np.float32(scores[keep - 1])
            if float(s32) > scores[keep - 1]:
                s32 = np.nextafter(s32, np.float32(-np.inf))
            thr = max(t_star, float(s32))
    called_normal = pn >= thr
    return {
        "threshold": thr,
        "sensitivity": _ratio(np.sum(t & ~called_normal), np.sum(t)),
        "specificity": _ratio(np.sum(~t & called_normal), np.sum(~t)),
        "normal_fraction": float(called_normal.mean()),
        "sensitivity_threshold": t_star,
    }


def classification_metrics(
    y_true: Any,
    p_tumour: Any,
    *,
    threshold: float = 0.5,
    triage_threshold: float = TRIAGE_THRESHOLD,
    n_bins: int = 10,
) -> dict[str, float]:
    """Slice-level classification metrics.

    Args:
        y_true: `(N,)` 0/1 truth (1 = tumour).
        p_tumour: `(N,)` P(tumour).
        threshold: P(tumour) from which a slice is predicted tumour (2-class argmax: 0.5).
        triage_threshold: the triage rule's P(normal) threshold for `sensitivity_at_triage`.
        n_bins: bins for the expected calibration error.

    Returns:
        accuracy, precision, recall, sensitivity (= recall), specificity, f1, roc_auc, ece,
        sensitivity_at_triage, normal_fraction_at_triage, tn, fp, fn, tp (floats; NaN where
        undefined).
    """
    t, p = _binary(y_true), _probs(p_tumour)
    if t.size != p.size or t.size == 0:
        raise ValueError(f"need equal, non-empty y_true ({t.size}) and p_tumour ({p.size})")
    cm = confusion(t, p >= threshold)
    precision = _ratio(cm["tp"], cm["tp"] + cm["fp"])
    recall = _ratio(cm["tp"], cm["tp"] + cm["fn"])
    f1 = _ratio(2 * precision * recall, precision + recall) if cm["tp"] else 0.0
    p_normal = 1.0 - p
    out = {
        "accuracy": _ratio(cm["tp"] + cm["tn"], t.size),
        "precision": precision,
        "recall": recall,
        "sensitivity": recall,
        "specificity": _ratio(cm["tn"], cm["tn"] + cm["fp"]),
        "f1": f1,
        "roc_auc": roc_auc(t, p),
        "ece": expected_calibration_error(t, p, n_bins),
        "sensitivity_at_triage": triage_sensitivity(t, p_normal, triage_threshold),
        "normal_fraction_at_triage": float(np.mean(p_normal >= triage_threshold)),
    }
    out.update({k: float(v) for k, v in cm.items()})
    return out


def as_bool(mask: Any) -> np.ndarray:
    """`mask` as a bool array: the array itself when it already is one (no copy; a patient's
    masks are megabytes), else `mask != 0` (numbers > 0 and < 0 are both foreground)."""
    m = np.asarray(mask)
    return m if m.dtype == bool else m != 0


def slice_counts(mask: Any) -> np.ndarray:
    """Foreground pixels of each slice of `(N, H, W)` masks (non-zero = foreground), `(N,)` int64.

    `np.count_nonzero` a slice at a time: numpy's sum of a bool array over axes widens every
    pixel first and took ten times as long on a patient's masks (triage counts them per patient).
    """
    m = np.asarray(mask)
    return np.fromiter((np.count_nonzero(s) for s in m), dtype=np.int64, count=len(m))


def _overlap(true: Any, pred: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slice (first axis) of two masks: `(intersection, true pixels, predicted pixels)`."""
    t, p = as_bool(true), as_bool(pred)
    if t.shape != p.shape:
        raise ValueError(f"true {t.shape} and pred {p.shape} masks differ in shape")
    return slice_counts(t & p), slice_counts(t), slice_counts(p)


def dice_per_slice(true: Any, pred: Any) -> np.ndarray:
    """Dice of each slice of `(N, H, W)` masks; 1.0 where both are empty. Returns `(N,)` float64."""
    inter, st, sp = _overlap(true, pred)
    den = st + sp
    return np.where(den == 0, 1.0, 2.0 * inter / np.maximum(den, 1))


def iou_per_slice(true: Any, pred: Any) -> np.ndarray:
    """IoU (Jaccard) of each slice of `(N, H, W)` masks; 1.0 where both are empty. Returns
    `(N,)`."""
    inter, st, sp = _overlap(true, pred)
    union = st + sp - inter
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def per_patient(true: Any, pred: Any, patients: Sequence[str]) -> dict[str, dict[str, float]]:
    """Volume Dice, IoU, recall and precision per patient (all of a patient's slices pooled).

    Dice and IoU are 1 where both masks are empty; recall (the share of the true tumour drawn) is
    NaN without true tumour, precision (the share of the drawing inside the true tumour) NaN
    without a drawing: where Dice is lost, to under-drawing or to false masks.

    Args:
        true, pred: `(N, H, W)` bool masks.
        patients: `(N,)` patient key of each slice.

    Returns:
        `{patient: {"dice", "iou", "recall", "precision", "slices"}}` in first-seen order.
    """
    t, p = as_bool(true), as_bool(pred)
    keys = np.asarray(list(patients))
    if keys.shape[0] != t.shape[0]:
        raise ValueError(f"{keys.shape[0]} patient keys for {t.shape[0]} slices")
    # Per-slice counts once, summed per patient: no copies of any patient's masks.
    per_slice = _overlap(t, p)
    out: dict[str, dict[str, float]] = {}
    for key in dict.fromkeys(keys.tolist()):
        sel = keys == key
        inter, st, sp = (float(v[sel].sum()) for v in per_slice)
        den, union = st + sp, st + sp - inter
        out[str(key)] = {
            "dice": 1.0 if den == 0 else 2.0 * inter / den,
            "iou": 1.0 if union == 0 else inter / union,
            "recall": inter / st if st else float("nan"),
            "precision": inter / sp if sp else float("nan"),
            "slices": float(sel.sum()),
        }
    return out


def segmentation_metrics(true: Any, pred: Any, patients: Sequence[str]) -> dict[str, float]:
    """Summary segmentation metrics for `(N, H, W)` masks: slice and patient means of Dice and IoU.

    Returns:
        dice_slice_mean, iou_slice_mean, dice_tumour_slice_mean (slices with true tumour only;
        NaN if none), dice_patient_mean, iou_patient_mean, dice_patient_min, patients, slices.
    """
    d, j = dice_per_slice(true, pred), iou_per_slice(true, pred)
    has_tumour = np.asarray(true).astype(bool).reshape(d.size, -1).any(axis=1)
    pp = per_patient(true, pred, patients)
    pd_ = np.array([v["dice"] for v in pp.values()])
    pj = np.array([v["iou"] for v in pp.values()])
    return {
        "dice_slice_mean": float(d.mean()) if d.size else float("nan"),
        "iou_slice_mean": float(j.mean()) if j.size else float("nan"),
        "dice_tumour_slice_mean": float(d[has_tumour].mean()) if has_tumour.any() else float("nan"),
        "dice_patient_mean": float(pd_.mean()) if pd_.size else float("nan"),
        "iou_patient_mean": float(pj.mean()) if pj.size else float("nan"),
        "dice_patient_min": float(pd_.min()) if pd_.size else float("nan"),
        "patients": float(len(pp)),
        "slices": float(d.size),
    }


def hd95(true: Any, pred: Any, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th percentile symmetric Hausdorff distance between two 3-D masks (surface to surface).

    Args:
        true, pred: `(N, H, W)` bool, a patient's slices stacked along the first axis.
        spacing: `(slice, row, column)` voxel size; NaN entries count as 1 (pixels), so Kaggle
            TIFs give distances in pixels.

    Returns:
        Distance in the units of `spacing`; 0.0 when both are empty, NaN when only one is (the
        distance to nothing is undefined).
    """
    from scipy import ndimage

    t, p = as_bool(true), as_bool(pred)
    if t.shape != p.shape:
        raise ValueError(f"true {t.shape} and pred {p.shape} masks differ in shape")
    if not t.any() and not p.any():
        return 0.0
    if not t.any() or not p.any():
        return float("nan")
    sp = np.asarray(
        [1.0 if not np.isfinite(float(s)) or float(s) <= 0 else float(s) for s in spacing]
    )
    # Both surfaces depend only on the box around the two masks (plus one background voxel): the
    # erosion sees the same neighbours there as in the whole volume. The surface-to-surface
    # distances are exact Euclidean nearest-surface distances between voxel centres in `spacing`
    # units: the same figures as distance transforms of the volume, at a fraction of the work (on
    # a whole LGG patient the transforms took longer than both models together). A voxel on both
    # surfaces is 0 from each and needs no query: on a good mask that is a large share of them.
    from pipeline.triage.postprocess import bounding_box

    box = bounding_box(t | p, margin=1)
    t_in, p_in = t[box], p[box]
    st = t_in & ~ndimage.binary_erosion(t_in, border_value=0)
    spr = p_in & ~ndimage.binary_erosion(p_in, border_value=0)
    both = st & spr
    # Square pixels (every LGG and most NIfTI slices): per-slice 2-D transforms, the same figures
    # bit for bit in 0.20-0.22 against 0.35-0.51 ms of CPU a slice for the k-d tree (70 LGG
    # patients' triage masks).
    nearest = _nearest_by_planes if sp[1] == sp[2] else _nearest_by_tree
    dist = np.concatenate(
        [np.zeros(2 * int(both.sum())), nearest(st, spr & ~both, sp), nearest(spr, st & ~both, sp)]
    )
    return float(np.percentile(dist, 95))


def _nearest_by_tree(surface: np.ndarray, others: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Distance from each voxel of `others` to the nearest voxel of `surface` (not empty), in
    `sp` units: an exact nearest-neighbour query in scipy's k-d tree (any voxel shape)."""
    from scipy.spatial import cKDTree

    if not others.any():
        return np.zeros(0)
    # Unbalanced, uncompacted: builds in half the time on grid points, same answers.
    tree = cKDTree(np.argwhere(surface) * sp, balanced_tree=False, compact_nodes=False)
    return np.asarray(tree.query(np.argwhere(others) * sp)[0])


def _nearest_by_planes(surface: np.ndarray, others: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """`_nearest_by_tree` for square pixels (`sp[1] == sp[2]`), exactly: each slice's in-plane
    distances to its surface pixels by OpenCV's exact 2-D transform, then for each voxel the
    nearest over the slices, sqrt(min over z' of ((z - z') sz)^2 + d_z'(y, x)^2).

    The transform's float32 distances are squared and rounded to the integers they are (squared
    distances between grid points), so no float32 error reaches the result."""
    import cv2

    points = np.argwhere(others)
    if not len(points):
        return np.zeros(0)
    planes = np.flatnonzero(surface.any(axis=(1, 2)))
    zs, ys, xs = points[:, 0], points[:, 1], points[:, 2]
    best = np.full(len(points), np.inf)  # a running minimum: one row, not planes x points
    for z in planes:
        plane = (~surface[z]).view(np.uint8)  # 0 on the surface: distances to it
        d = cv2.distanceTransform(plane, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[ys, xs]
        squared = np.rint(d.astype(np.float64) ** 2) * sp[1] ** 2 + ((zs - z) * sp[0]) ** 2
        np.minimum(best, squared, out=best)
    return np.sqrt(best)


def bootstrap_ci(
    items: Sequence[Any],
    statistic: Any,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(resampled items)`, resampling whole items.

    Items are patients, so slice-level figures (sensitivity, ROC AUC) are resampled by patient and
    the interval reflects patient-to-patient variation.

    Args:
        items: the per-patient records (anything `statistic` understands).
        statistic: function of a list of items → float (NaN results are dropped).
        n_boot: bootstrap resamples.
        level: interval coverage.
        seed: resampling seed.

    Returns:
        `(low, high)`; NaN, NaN when there are no items or no finite resample.
    """
    n = len(items)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, n, n)
        v = float(statistic([items[i] for i in pick]))
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
