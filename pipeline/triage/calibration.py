"""Temperature scaling of the classifier's P(tumour) (Guo et al. 2017), pure numpy/scipy.

The classifier's two-class softmax is a sigmoid of the logit `z = log(p_tumour / p_normal)`.
Temperature scaling divides `z` by one scalar `T > 0` fitted on validation slices by minimising the
negative log-likelihood; the ranking of slices (and so ROC AUC and every sensitivity at a matched
threshold) is unchanged, only the probabilities move closer to observed frequencies.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Probabilities are clipped to [EPS, 1 - EPS] before taking logits.
EPS = 1e-7
#: Search range of log(T): T in [e^-3, e^4] ~ [0.05, 55].
LOG_T_BOUNDS = (-3.0, 4.0)


def logits(p_tumour: Any) -> np.ndarray:
    """`log(p / (1 - p))` of `(N,)` probabilities, clipped away from 0 and 1 (float64)."""
    p = np.clip(np.asarray(p_tumour, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(p_tumour: Any, temperature: float) -> np.ndarray:
    """Calibrated P(tumour) `sigmoid(logit(p) / T)`, float32 of the input's shape.

    `T = 1` returns the input (as float32); NaN stays NaN.
    """
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    p = np.asarray(p_tumour, dtype=np.float64)
    if temperature == 1.0:
        return p.astype(np.float32)
    out = 1.0 / (1.0 + np.exp(-logits(p) / temperature))
    return np.where(np.isnan(p), np.nan, out).astype(np.float32)


def fit_temperature(y_true: Any, p_tumour: Any) -> float:
    """The temperature that minimises the validation negative log-likelihood.

    Args:
        y_true: `(N,)` 0/1 (1 = tumour slice).
        p_tumour: `(N,)` uncalibrated P(tumour).

    Returns:
        `T > 0`; 1.0 when the set is empty or holds a single class (nothing to fit).
    """
    from scipy.optimize import minimize_scalar

    y = np.asarray(y_true).astype(np.float64).ravel()
    z = logits(p_tumour).ravel()
    keep = np.isfinite(z)
    y, z = y[keep], z[keep]
    if y.size == 0 or y.min() == y.max():
        return 1.0

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        # log(1 + e^s) - y s, written stably.
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    res = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded")
    return float(np.exp(res.x))


def model_temperature(info: dict[str, Any] | None) -> float:
    """The classifier's logged temperature (`info["temperature"]`; 1 when none was fitted)."""
    return float((info or {}).get("temperature", 1.0) or 1.0)


def gate_p_normal(p_tumour: Any, temperature: float = 1.0) -> np.ndarray:
    """P(normal) the triage gate routes on: 1 - the classifier's P(tumour) after its temperature.

    The one place triage (`pipeline.triage.inference`), the OpenVINO parity check
    (`pipeline.triage.runtime`) and the benchmark turn a classifier output into the gate's input.
    """
    return 1.0 - apply_temperature(np.asarray(p_tumour, np.float64), temperature)
