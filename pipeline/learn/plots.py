"""Training and evaluation figures (matplotlib, Agg backend): each function writes one PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def training_curves(history: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """Loss and accuracy (or Dice) per epoch, training beside validation.

    Args:
        history: Keras `History.history`: `{"loss": [...], "val_loss": [...], ...}`.
        path: PNG to write.
    """
    metrics = [k for k in history if not k.startswith("val_") and k not in ("lr", "learning_rate")]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4.5 * max(len(metrics), 1), 3.5))
    for ax, key in zip(np.atleast_1d(axes), metrics, strict=False):
        epochs = np.arange(1, len(history[key]) + 1)
        ax.plot(epochs, history[key], marker="o", label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], marker="o", label="validation")
        ax.set_xlabel("epoch")
        values = np.asarray([*history[key], *history.get(f"val_{key}", [])], dtype=float)
        values = values[np.isfinite(values)]
        if "loss" in key and len(values) and values.min() > 0 and values.max() > 10 * values.min():
            ax.set_yscale("log")  # one validation spike would flatten every other epoch
            key = f"{key} (log scale)"
        ax.set_title(key)
        ax.legend()
    return _save(fig, path)


def confusion_matrix(cm: Mapping[str, float], path: str | Path, title: str = "test slices") -> Path:
    """2x2 confusion matrix from `{"tn", "fp", "fn", "tp"}` (rows truth, columns prediction)."""
    grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]], dtype=float)
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(grid, cmap="Blues")
    for (i, j), v in np.ndenumerate(grid):
        colour = "white" if v > grid.max() / 2 else "black"
        ax.text(j, i, f"{int(v)}", ha="center", va="center", color=colour)
    ax.set_xticks([0, 1], ["normal", "tumour"])
    ax.set_yticks([0, 1], ["normal", "tumour"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, path: str | Path) -> Path:
    """ROC curve of P(tumour) with its area in the legend."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right")
    return _save(fig, path)


def reliability(rel: Mapping[str, Sequence[float]], ece: float, path: str | Path) -> Path:
    """Reliability diagram from `metrics.reliability` output."""
    conf = np.asarray(rel["confidence"], dtype=float)
    freq = np.asarray(rel["frequency"], dtype=float)
    lower, upper = np.asarray(rel["bin_lower"]), np.asarray(rel["bin_upper"])
    ok = np.isfinite(freq)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.bar(
        lower[ok], freq[ok], width=(upper - lower)[ok], align="edge", alpha=0.6, label="observed"
    )
    ax.plot(conf[ok], freq[ok], marker="o", color="black", label="bin means")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set_xlabel("predicted P(tumour)")
    ax.set_ylabel("fraction of tumour slices")
    ax.set_title(f"ECE = {ece:.3f}")
    ax.legend(loc="upper left")
    return _save(fig, path)


def mask_grid(
    images: np.ndarray,
    true: np.ndarray,
    pred: np.ndarray,
    path: str | Path,
    max_slices: int = 8,
) -> Path:
    """Test slices (FLAIR channel) with true (green) and predicted (red) mask outlines overlaid.

    Args:
        images: `(N, H, W, 3)` float in [0, 1].
        true, pred: `(N, H, W)` bool.
        path: PNG to write.
        max_slices: columns shown (the first N).
    """
    n = min(len(images), max_slices)
    fig, axes = plt.subplots(3, max(n, 1), figsize=(2.2 * max(n, 1), 6.6), squeeze=False)
    for j in range(n):
        flair = images[j, ..., 1]
        for i, (mask, title) in enumerate(((None, "FLAIR"), (true[j], "true"), (pred[j], "pred"))):
            ax = axes[i, j]
            ax.imshow(flair, cmap="gray", vmin=0, vmax=1)
            if mask is not None and np.any(mask):
                ax.contour(mask.astype(float), levels=[0.5], colors="lime" if i == 1 else "red")
            ax.set_axis_off()
            if j == 0:
                ax.set_title(title, loc="left", fontsize=9)
    if n == 0:
        axes[0, 0].set_axis_off()
    return _save(fig, path)
