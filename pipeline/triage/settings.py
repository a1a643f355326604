"""What a triage run is asked to do: the settings records and their defaults, in one place.

`TriageSettings` is what each patient's work uses (part of its manifest key); `RunOptions` is a
whole run (the Prefect flow's parameters). The command line, the flow, the deployment, `bench` and
`export` take their defaults from these two records instead of repeating them. Light on purpose
(numpy only), so the command line can read the defaults while it builds its parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from models.precision import XLA_CHOICES
from pipeline.io.quality import DEFAULT_LIMITS, Limits
from pipeline.triage.postprocess import (
    DEFAULT_LONE_SLICE_AREA,
    DEFAULT_MIN_COMPONENT,
    DEFAULT_MIN_VOLUME,
)
from pipeline.triage.rule import DEFAULT_THRESHOLD, check_gate_context, check_threshold

if TYPE_CHECKING:
    from pipeline.triage.inference import TriageModels

DEFAULT_CLASSIFIER = "models:/mri-triage-classifier@champion"
DEFAULT_SEGMENTER = "models:/mri-triage-segmenter@champion"
#: Keras dtype policies for inference; "auto" = bf16 on CPUs with native bf16, else float32.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
#: Inference runtimes (`pipeline.triage.runtime.load_triage_runtime`).
RUNTIMES = ("tf", "openvino", "auto")
#: OpenVINO precisions, usually fastest last; "auto" picks the verified one measured fastest on this
#: CPU (`pipeline.triage.runtime.choose_export`).
OV_PRECISIONS = ("f32", "bf16", "int8")
OV_PRECISION_CHOICES = (*OV_PRECISIONS, "auto")
#: Patients processed at once by a run (the flow's threads or local Dask workers).
WORKERS = 2


@dataclass(frozen=True)
class TriageSettings:
    """What a triage run does besides which models it uses (part of each patient's manifest key).

    Attributes:
        threshold: P(normal) at or above which a slice is normal.
        min_component: smallest kept mask component, in native pixels.
        batch: slices per model call (an OpenVINO export is compiled for this batch).
        precision: Keras dtype policy for inference, one of `PRECISIONS`.
        montage_max: unused since reports show every slice in a viewer (kept for callers).
        lone_slice_area: a 3-D mask component on one slice only is dropped below this area, in
            pixels of a 256x256 slice (scaled with the native slice's pixel count); 0 keeps it.
        min_volume: a 3-D mask component below this many voxels (same scaling) is dropped.
        fill_holes: fill the holes inside each slice's mask before the 3-D clean-up
            (`pipeline.triage.postprocess.fill_holes`; on by default: +0.005 per-patient Dice on
            three folds of held-out LGG patients, none lower; docs/ACCURACY.md row 48).
        tta: average the segmenter over the slice and its left-right mirror (on by default:
            +0.02 per-patient Dice on held-out LGG patients; twice the
            segmenter's work).
        runtime: one of `RUNTIMES`; "auto" = OpenVINO when installed and a verified export of
            the model exists, else TensorFlow (`pipeline.triage.runtime.load_triage_runtime`).
        ov_precision: OpenVINO precision, one of `OV_PRECISION_CHOICES` ("auto": fastest verified).
        limits: input size limits (`pipeline.io.quality.Limits`), checked from headers on load.
        prefetch: patients a worker reads ahead of its models, while it writes the previous one
            behind them (`pipeline.triage.worker`; at most prefetch + 4 patients in memory); 0 =
            each patient start to finish in turn.
        xla: compile the TF models with XLA, one of `XLA_CHOICES`; "auto" = on a GPU only (with
            `precision="auto"` a GPU also gets `mixed_float16`: `models.precision.inference_plan`).
        gate_context: slices either side whose P(normal) also counts for a slice's routing
            (`pipeline.triage.rule.context_p_normal`); None = the context the classifier's
            operating point was chosen with (0 for a classifier that logged none).
    """

    threshold: float = DEFAULT_THRESHOLD
    min_component: int = DEFAULT_MIN_COMPONENT
    batch: int = 16
    precision: str = "float32"
    montage_max: int = 48
    lone_slice_area: int = DEFAULT_LONE_SLICE_AREA
    min_volume: int = DEFAULT_MIN_VOLUME
    fill_holes: bool = True
    tta: bool = True
    runtime: str = "auto"
    ov_precision: str = "auto"
    limits: Limits = DEFAULT_LIMITS
    prefetch: int = 1
    xla: str = "auto"
    gate_context: int | None = None

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        if self.gate_context is not None:
            check_gate_context(self.gate_context)
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {self.prefetch}")
        if self.xla not in XLA_CHOICES:
            raise ValueError(f"xla must be one of {XLA_CHOICES}, got {self.xla!r}")
        if self.batch < 1 or self.min_component < 0 or self.montage_max < 0:
            raise ValueError("batch must be >= 1, min_component and montage_max >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.runtime not in RUNTIMES or self.ov_precision not in OV_PRECISION_CHOICES:
            raise ValueError(
                f"runtime must be one of {RUNTIMES} and ov_precision one of "
                f"{OV_PRECISION_CHOICES}, got {self.runtime!r}, {self.ov_precision!r}"
            )

    def load_models(self, classifier: str | None, segmenter: str | None) -> TriageModels:
        """The two models on this run's runtime (`pipeline.triage.runtime.load_triage_runtime`)."""
        from pipeline.triage.runtime import load_triage_runtime

        return load_triage_runtime(
            classifier, segmenter, self.batch, self.precision, self.runtime,
            self.ov_precision, self.threshold, self.xla,
        )  # fmt: skip

    def key_part(self) -> dict[str, Any]:
        """Settings that change outputs (batch and montage size only change speed and looks).

        A gate context left to the classifier is not named: the model's version already is.
        """
        key = {
            "threshold": self.threshold,
            "min_component": self.min_component,
            "lone_slice_area": self.lone_slice_area,
            "min_volume": self.min_volume,
            "tta": self.tta,
        }
        if self.fill_holes:  # named only when on: outputs written before it existed had none
            key["fill_holes"] = True
        if self.gate_context is not None:
            key["gate_context"] = self.gate_context
        return key


@dataclass(frozen=True)
class RunOptions:
    """What a triage run uses besides its archive and output folder (the flow's parameters).

    Attributes:
        classifier, segmenter: model URIs or `.keras` files; None = registered champion.
        threshold: P(normal) at or above which a slice is normal; None = the classifier's logged
            operating point (`pipeline.triage.rule.resolve_threshold`).
        force: redo patients the manifest says are done.
        min_component, batch, precision, runtime, ov_precision, limits, prefetch, xla: see
            `TriageSettings` (same defaults).
        track: log one MLflow run (aggregate params and metrics).
        log_outputs: also upload the patient-keyed reports and masks to that run.
        series_pattern: DICOM FLAIR series rule (`build_index`).
        key_map: DICOM: also write the pseudonym map into the output folder.
        postprocess: further `TriageSettings` fields (`lone_slice_area`, `min_volume`,
            `fill_holes`, `tta`, `gate_context`).
        log_patient_ids: name patients by their keys in the run's log lines and Prefect task run
            names (opt-in: patient keys are identifiers); otherwise they are named by their
            position in the run (`patient 3/10`).
    """

    classifier: str | None = None
    segmenter: str | None = None
    threshold: float | None = None
    force: bool = False
    min_component: int = TriageSettings.min_component
    batch: int = TriageSettings.batch
    precision: str = TriageSettings.precision
    track: bool = True
    runtime: str = TriageSettings.runtime
    ov_precision: str = TriageSettings.ov_precision
    series_pattern: str | None = None
    key_map: bool = False
    limits: Limits = DEFAULT_LIMITS
    postprocess: dict[str, Any] = field(default_factory=dict)
    log_outputs: bool = False
    log_patient_ids: bool = False
    prefetch: int = TriageSettings.prefetch
    xla: str = TriageSettings.xla
