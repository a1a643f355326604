"""Keras architectures, losses and metrics for mri-triage.

The builders are imported lazily (`from models import build_resunet` imports TensorFlow then), so
`import models` stays cheap for commands that never touch a network.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_classifier": "models.classifier",
    "set_backbone_trainable": "models.classifier",
    "WeightsUnavailableError": "models.classifier",
    "build_resunet": "models.resunet",
    "build_resunet_pp": "models.resunet_pp",
    "get_loss": "models.losses",
    "SEGMENTATION_METRICS": "models.losses",
    "inference_policy": "models.precision",
    "rebuild_with_policy": "models.precision",
    "policy_scope": "models.precision",
    "parameter_table": "models.summary",
    "model_flops": "models.summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
