"""MLflow as its users expect: described experiments, the training data as a dataset input,
model versions with a model card.

Small functions over `MlflowClient` (the store is `pipeline.tracking.configure_tracking`'s). Never
a patient key: the dataset input is described by its fingerprint, split sizes and counts only.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: What each experiment holds (the MLflow UI shows it as the experiment's description).
EXPERIMENT_DESCRIPTIONS = {
    "mri-triage-classifier": "Slice classifiers (tumour vs normal) that gate the segmenter. Each "
    "run trains on a patient-level split of a labelled archive, fits a temperature and the "
    "operating point on validation patients and reports test metrics; versions are registered as "
    "mri-triage-classifier, the best on validation carrying the alias @champion.",
    "mri-triage-segmenter": "Tumour segmenters (ResUNet family) run on the slices the classifier "
    "flags. Registered as mri-triage-segmenter; @champion is the best on validation Dice.",
    "mri-triage-triage": "Triage runs over an archive: run-level counts, throughput and, where the "
    "archive has masks, end-to-end metrics. Patient-keyed reports are uploaded only with "
    "--log-outputs.",
    "mri-triage-evaluate": "Patient-level k-fold cross-validation of the whole cascade.",
}
#: The UI opens these experiments in model-training (not GenAI) mode.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
NOTE = "mlflow.note.content"


def describe_experiment(client: Any, experiment_id: str, name: str) -> None:
    """Set the experiment's description and kind when it has none (a user's edit is kept)."""
    exp = client.get_experiment(experiment_id)
    tags = dict(exp.tags or {})
    if NOTE not in tags and name in EXPERIMENT_DESCRIPTIONS:
        client.set_experiment_tag(experiment_id, NOTE, EXPERIMENT_DESCRIPTIONS[name])
    if EXPERIMENT_KIND[0] not in tags:
        client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)


def dataset_profile(plan: Any) -> dict[str, Any]:
    """What the dataset input says about the training data: sizes and counts, no keys."""
    splits = {k: len(v) for k, v in dict(plan.splits).items()}
    pixels = plan.table.get("tumour_pixels")
    return {
        "slices": len(plan.table),
        "patients_per_split": splits,
        "tumour_slices": None if pixels is None else int((pixels > 0).sum()),
        "skipped_files": int(plan.skipped_files),
    }


def log_training_data(run_id: str, plan: Any, archive: str) -> None:
    """Log the training archive as the active run's MLflow dataset input (context "training").

    A metadata-only dataset: its digest is the archive fingerprint (`pipeline.io.index.fingerprint`,
    the first 36 characters MLflow keeps), its profile the split sizes and counts; the patient
    table itself is never logged. Call inside `tracking.start_run` (same thread).
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    import mlflow
    from pipeline.io.safety import display_text

    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        raise RuntimeError("log_training_data must run inside start_run, in the same thread")
    profile = dataset_profile(plan)

    class ArchiveDataset(MetaDataset):
        @property
        def profile(self) -> Any:
            return profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(profile)}

    name = display_text(str(archive).rstrip("/").rsplit("/", 1)[-1] or "archive")
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local folder
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(archive).absolute()))
    mlflow.log_input(ArchiveDataset(source, name, plan.fingerprint[:36]), context="training")


def model_card(
    kind: str,
    info: Mapping[str, Any],
    val: Mapping[str, Any],
    test: Mapping[str, Any],
    data: Mapping[str, Any],
) -> str:
    """A model version's description (Markdown): data, recipe, metrics, operating point."""

    def num(x: Any) -> str:
        return f"{x:.4g}" if isinstance(x, int | float) else str(x)

    lines = [
        f"**{kind.capitalize()}** `{info.get('architecture', '?')}` "
        f"(preset `{info.get('preset') or 'none'}`). Research use only, not a medical device.",
        "",
        f"**Data**: archive fingerprint `{str(data.get('fingerprint', ''))[:12]}`, "
        f"{data.get('slices', '?')} slices, patients per split "
        f"{data.get('patients_per_split')}.",
        f"**Selection**: {info.get('selection_metric')} on validation = "
        f"{num(info.get('val_score'))}.",
    ]
    if "operating_point" in info:
        reach = int(info.get("gate_context") or 0)
        where = f"P(normal) on it and the {reach} slice(s) either side" if reach else "P(normal)"
        lines.append(
            f"**Operating point**: a slice is normal when {where} >= "
            f"{num(info['operating_point'])} (validation sensitivity "
            f">= {num(info.get('min_sensitivity'))}"
            + (
                f", then raised while calling {num(info['min_saved'])} of it normal"
                if info.get("min_saved") is not None
                else ""
            )
            + f"); temperature {num(info.get('temperature'))}."
        )
    keys = ("roc_auc", "sensitivity_at_operating_point", "normal_fraction_at_operating_point")
    shown = [k for k in (*keys, "dice", "iou") if k in test]
    if shown:
        lines.append("**Test**: " + ", ".join(f"{k} {num(test[k])}" for k in shown) + ".")
    return "\n".join(lines)


def describe_model_version(kind: str, version: str, description: str) -> None:
    """Set a registered version's description (its model card in the MLflow UI)."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import REGISTERED_MODELS

    MlflowClient().update_model_version(REGISTERED_MODELS[kind], version, description=description)
