"""Inference runtimes behind one interface: TensorFlow (the reference) or OpenVINO (optional, fast).

`load_triage_runtime` is the one door triage, `bench triage` and `evaluate` go through:
`runtime="tf"` loads the Keras models (`pipeline.triage.inference.load_triage_models`); `"openvino"`
loads the OpenVINO IR exported once per model version by `pipeline.triage.ov_export` (cached under
`export_root()`, keyed by the model's digest) and checks its parity record against TF fp32;
`"auto"` = OpenVINO when it is installed and a verified export exists, else TF. A model whose
export is missing or fails parity is refused with a clear message and runs on TF instead.

Nothing in this module imports TensorFlow or Keras: a run where both models come from verified
exports never loads TF (start-up time and memory are part of the win). The model's kind,
preprocessing and logged info come from the export's own record, written from the TF model.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.manifest import remembered_digest
from pipeline.io.preprocess import PreprocessConfig
from pipeline.triage.calibration import gate_p_normal, model_temperature
from pipeline.triage.rule import resolve_threshold, route_slices
from pipeline.triage.settings import OV_PRECISION_CHOICES, OV_PRECISIONS, RUNTIMES, TriageSettings

log = logging.getLogger(__name__)

EXPORT_RECORD = "export.json"
#: Version of the export recipe, kept in each record. `mri-triage export` re-exports a copy made by
#: an older recipe (2: nearest upsampling as one resize, `models.layers.for_export`); triage still
#: serves an older copy (the same outputs, only slower) until then.
EXPORT_FORMAT = 2
CACHE_ENV = "MRI_TRIAGE_CACHE"
#: Per-CPU speed of one export (`measure_speed`), beside its record: written by `mri-triage
#: export`, read by `choose_export` to pick the fastest verified precision on this CPU.
SPEED_RECORD = "speed.json"


# ---------------------------------------------------------------- parity --------------------------


@dataclass(frozen=True)
class ParityPolicy:
    """When an optimised model may replace TF fp32 (measured on held-out slices at export time).

    Attributes:
        min_dice: least pooled mask Dice of a segmenter versus TF fp32 (masks at 0.5).
        max_gate_flips: most classifier routing decisions that may change at the threshold.
    """

    min_dice: float = 0.99
    max_gate_flips: int = 0


@dataclass(frozen=True)
class ParityRecord:
    """How one optimised model compares with TF fp32 on the parity slices.

    Attributes:
        kind: "classifier" or "segmenter".
        precision: one of `OV_PRECISIONS`.
        slices: parity slices compared.
        max_abs_diff: max |ΔP| (P(tumour) per slice for a classifier, per pixel for a segmenter).
        p_tumour_tf, p_tumour_ov: classifier P(tumour) per parity slice, uncalibrated (gate flips
            at any threshold and temperature are recomputed from these); empty for a segmenter.
        dice: segmenter masks' pooled Dice versus TF fp32 (NaN for a classifier).
        mask_pixels_tf: pixels TF fp32 called tumour on the parity slices (segmenter).
    """

    kind: str
    precision: str
    slices: int
    max_abs_diff: float
    p_tumour_tf: tuple[float, ...] = ()
    p_tumour_ov: tuple[float, ...] = ()
    dice: float = float("nan")
    mask_pixels_tf: int = 0

    def gate_flips(self, threshold: float, temperature: float = 1.0) -> int:
        """Parity slices whose route changes at `threshold`, routed as triage routes them
        (`gate_p_normal`, then `pipeline.triage.rule.route_slices`)."""
        if not self.p_tumour_tf:
            return 0
        a = route_slices(gate_p_normal(self.p_tumour_tf, temperature), threshold)
        b = route_slices(gate_p_normal(self.p_tumour_ov, temperature), threshold)
        return int((a != b).sum())

    def refusal(
        self, threshold: float, policy: ParityPolicy = ParityPolicy(), temperature: float = 1.0
    ) -> str | None:
        """Why this model may not replace TF fp32 at `threshold`, or None when it may."""
        if self.slices < 1:
            return "no parity slices were measured"
        if self.kind == "classifier":
            if len(self.p_tumour_tf) != self.slices or len(self.p_tumour_ov) != self.slices:
                return "the parity record lacks per-slice P(tumour) (export again with --force)"
            flips = self.gate_flips(threshold, temperature)
            if flips > policy.max_gate_flips:
                return (
                    f"{flips} of {self.slices} parity slices change route at threshold "
                    f"{threshold} (allowed {policy.max_gate_flips})"
                )
            return None
        if not np.isfinite(self.dice) or self.dice < policy.min_dice:
            return f"mask Dice versus TF fp32 {self.dice:.4f} < {policy.min_dice}"
        return None

    def summary(self, threshold: float, temperature: float = 1.0) -> dict[str, Any]:
        """Small JSON-able figures (no per-slice arrays) for reports and benchmarks."""
        out: dict[str, Any] = {
            "precision": self.precision,
            "slices": self.slices,
            "max_abs_diff": round(self.max_abs_diff, 6),
        }
        if self.kind == "classifier":
            out["gate_flips"] = self.gate_flips(threshold, temperature)
        else:
            out["dice"] = round(self.dice, 5)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParityRecord:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in data.items() if k in known}  # records of other versions load too
        for key in ("p_tumour_tf", "p_tumour_ov"):
            d[key] = tuple(float(v) for v in d.get(key, ()))
        d["dice"] = float("nan") if d.get("dice") is None else float(d["dice"])
        return cls(**d)


# ---------------------------------------------------------------- exports on disk -----------------


@dataclass(frozen=True)
class ModelCard:
    """What triage needs to know about a model, without loading it (duck-types `LoadedModel`).

    Attributes:
        kind: "classifier" or "segmenter".
        preprocess: the model's own preprocessing.
        version: registry version (`mri-triage-classifier/3`) or the local file name.
        info: logged extras (operating point, ...).
        digest: sha256 key of the model's bytes (local) or registry version + MLmodel.
    """

    kind: str
    preprocess: PreprocessConfig
    version: str
    info: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    model: Any = None  # no Keras model on the OpenVINO path


def export_root() -> Path:
    """Where exports live: `$MRI_TRIAGE_CACHE/openvino`, else `~/.cache/mri-triage/openvino`."""
    base = os.environ.get(CACHE_ENV)
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "mri-triage")
    return Path(base) / "openvino"


def _is_local(uri: str) -> bool:
    return "://" not in uri and not uri.startswith(("models:/", "runs:/"))


def model_digest(uri: str) -> tuple[str, str]:
    """`(version, digest)` of a model without loading it (no TF).

    A local `.keras` file: its name and the sha256 of its bytes and sidecar; a new file = a new
    digest. A registry or run URI: the resolved version and a digest of the version and its MLmodel
    file (which carries MLflow's model UUID), so a new version never reuses an old export.

    Raises:
        FileNotFoundError: a local file that does not exist.
    """
    if _is_local(uri):
        path = Path(uri)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        parts = [p for p in (path, path.with_suffix(".json")) if p.is_file()]

        def sha256() -> str:
            h = hashlib.sha256()
            for part in parts:
                with part.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            return h.hexdigest()

        # Once per unchanged file, not once per patient (hashing a 300 MB model takes ~0.5 s).
        return path.name, remembered_digest(parts, sha256, kind="export-key")
    from pipeline.tracking import model_reference

    version, mlmodel = model_reference(uri)
    return version, hashlib.sha256(f"{version}\n".encode() + mlmodel).hexdigest()


def export_dir(digest: str, precision: str, root: Path | None = None) -> Path:
    """The folder of one export: `<root>/<digest[:20]>/<precision>/`."""
    if precision not in OV_PRECISIONS:
        raise ValueError(f"precision must be one of {OV_PRECISIONS}, got {precision!r}")
    return (root or export_root()) / digest[:20] / precision


def read_export(folder: Path) -> dict[str, Any] | None:
    """The export record of `folder` (`export.json`), or None when absent or incomplete."""
    rec = folder / EXPORT_RECORD
    if not rec.is_file() or not (folder / "model.xml").is_file():
        return None
    return dict(json.loads(rec.read_text(encoding="utf-8")))


def card_from_record(record: dict[str, Any]) -> ModelCard:
    """The model card written into an export record."""
    return ModelCard(
        kind=str(record["kind"]),
        preprocess=PreprocessConfig.from_dict(record["preprocess"]),
        version=str(record["version"]),
        info=dict(record.get("info", {})),
        digest=str(record["digest"]),
    )


# ---------------------------------------------------------------- OpenVINO ------------------------


def openvino_available() -> bool:
    """True when the `openvino` package can be imported (the `mri-triage[openvino]` extra)."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def ov_capabilities() -> tuple[str, ...]:
    """The CPU plugin's optimisation capabilities as OpenVINO reports them (e.g. BF16, INT8)."""
    import openvino as ov

    return tuple(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def supported_precisions() -> tuple[str, ...]:
    """The `OV_PRECISIONS` this CPU runs natively (asked of the runtime, not guessed by name)."""
    caps = set(ov_capabilities())
    return tuple(p for p in OV_PRECISIONS if p == "f32" or p.upper() in caps)


@functools.lru_cache(maxsize=1)
def cpu_signature() -> str:
    """What an export's speed depends on: the CPU's name, OpenVINO's view of its capabilities
    and the cores this process may use (a speed measured on another machine is not reused).
    Asked of OpenVINO once per process: `choose_export` reads it for every candidate."""
    try:
        name = str(_ov_core().get_property("CPU", "FULL_DEVICE_NAME"))
    except RuntimeError:  # a plugin that does not report it: the capabilities still tell
        name = "CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} | {' '.join(sorted(ov_capabilities()))} | {cores} cores"


def read_speed(folder: Path) -> float | None:
    """Milliseconds a slice of the export in `folder` took on this CPU (None: not measured here,
    or an unreadable record)."""
    try:
        entry = json.loads((folder / SPEED_RECORD).read_text(encoding="utf-8"))[cpu_signature()]
        ms = float(entry["ms_per_slice"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return ms if np.isfinite(ms) and ms > 0 else None


def measure_speed(xml: Path, precision: str, x: np.ndarray, batch: int, rounds: int = 3) -> float:
    """Milliseconds a slice for the IR at `xml` compiled as triage compiles it (fixed `batch`),
    best of `rounds` passes over up to 4 batches of `x` after a warm-up batch."""
    pred = OvPredictor(compile_ir(xml, precision, batch), batch)
    x = x[: batch * 4]
    pred(x[:batch])  # first call: allocations, kernel choice
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        pred(x)
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best / len(x)


def write_speed(folder: Path, ms_per_slice: float, batch: int) -> None:
    """Record this CPU's speed of the export in `folder` (other CPUs' entries are kept)."""
    from pipeline.io.manifest import atomic_write_text

    path = folder / SPEED_RECORD
    try:
        table = dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        table = {}
    table[cpu_signature()] = {
        "ms_per_slice": round(float(ms_per_slice), 4),
        "batch": int(batch),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(path, json.dumps(table, indent=1))


def compile_config(precision: str) -> dict[str, Any]:
    """CPU plugin settings: explicit inference precision (OpenVINO silently picks bf16 on CPUs
    that have it), no thread pinning (it hurts on a shared machine), one stream."""
    hint = "bf16" if precision == "bf16" else "f32"
    return {
        "INFERENCE_PRECISION_HINT": hint,
        "ENABLE_CPU_PINNING": False,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }


_core: Any = None


def _ov_core() -> Any:
    global _core
    if _core is None:
        import openvino as ov

        _core = ov.Core()
    return _core


def compile_ir(xml: str | Path, precision: str, batch: int) -> Any:
    """Read an IR, fix its batch dimension to `batch` (dynamic batches cost ~10%), compile it."""
    core = _ov_core()
    model = core.read_model(str(xml))
    shape = [int(batch), *[int(d.get_length()) for d in model.input(0).get_partial_shape()[1:]]]
    model.reshape(shape)
    return core.compile_model(model, "CPU", compile_config(precision))


#: Batch of the second compiled copy that runs the rest of a call (see `OvPredictor`).
TAIL_BATCH = 4


class OvPredictor:
    """An OpenVINO compiled model with `BatchPredictor`'s interface (call, `seconds`, `slices`).

    Compiled for a fixed batch (a dynamic batch costs ~10%). A call's last `r` slices run on
    `tail`, a copy compiled for a batch of `TAIL_BATCH`, when that computes fewer padded slices
    than one full batch (r <= batch - TAIL_BATCH); else, or without `tail`, the last batch is
    zero-padded. Padding is dropped. One patient's slices per call, so without the tail copy a
    quarter of the work on the LGG archive was padding (2400 slices computed as 3008 at batch 16).
    Predictors sharing `lock` run one call at a time (see
    `pipeline.triage.inference.BatchPredictor`).
    """

    def __init__(
        self,
        compiled: Any,
        batch: int,
        lock: threading.Lock | None = None,
        tail: Any = None,
    ) -> None:
        self.compiled = compiled
        self.batch = int(batch)
        self.input_shape = tuple(int(d) for d in compiled.input(0).get_shape())
        self.output_shape = tuple(int(d) for d in compiled.output(0).get_shape())
        self._request = compiled.create_infer_request()
        self._pad = np.zeros(self.input_shape, np.float32)
        self._tail: tuple[Any, np.ndarray] | None = None
        if tail is not None:
            shape = tuple(int(d) for d in tail.input(0).get_shape())
            if shape[0] < self.batch:
                self._tail = (tail.create_infer_request(), np.zeros(shape, np.float32))
        self._compute = lock if lock is not None else threading.Lock()
        self._lock = threading.Lock()
        self.seconds = 0.0
        self.slices = 0
        self.computed = 0  # slices the model computed, padding included

    def _run(self, request: Any, pad: np.ndarray, part: np.ndarray) -> np.ndarray:
        n = len(part)
        if n < len(pad):
            pad[:n] = part
            pad[n:] = 0.0
            part = pad
        self.computed += len(pad)
        return np.asarray(request.infer([part], share_inputs=True)[0][:n])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Predict `(N, S, S, 3)` float32; returns `(N, ...)` float32 outputs."""
        x = np.asarray(x, dtype=np.float32)
        out = np.empty((len(x), *self.output_shape[1:]), np.float32)
        with self._compute:
            start = time.perf_counter()
            i = 0
            while i < len(x):
                rest = len(x) - i
                if self._tail is not None and rest <= self.batch - len(self._tail[1]):
                    request, pad = self._tail
                else:
                    request, pad = self._request, self._pad
                part = x[i : i + len(pad)]
                out[i : i + len(part)] = self._run(request, pad, part)
                i += len(part)
            spent = time.perf_counter() - start
        with self._lock:
            self.seconds += spent
            self.slices += len(x)
        return out


@dataclass(frozen=True)
class OvChoice:
    """The result of looking for a usable export of one model."""

    card: ModelCard | None
    xml: Path | None
    precision: str
    parity: dict[str, Any] | None
    reason: str | None  # why no export is used (None when one is)


def choose_export(
    uri: str,
    precision: str = "auto",
    threshold: float | None = None,
    policy: ParityPolicy = ParityPolicy(),
    root: Path | None = None,
) -> OvChoice:
    """Find the fastest export of `uri` at `precision` whose parity passes (no TF, no compile).

    With `precision="auto"`, of the exports whose parity passes the one `mri-triage export`
    measured fastest on this CPU (`read_speed`); where one of them has no measurement here, the
    first of int8, bf16, f32 (on some CPUs bf16 beats int8: the speed is measured, not assumed).
    A classifier's gate flips are judged at `threshold`; None = its logged operating point
    (`pipeline.triage.rule.resolve_threshold`, as the triage run itself resolves it).

    Returns:
        An `OvChoice`; `reason` says why none is usable (missing export, parity refused, bf16 not
        supported by this CPU).
    """
    if precision not in OV_PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {OV_PRECISION_CHOICES}, got {precision!r}")
    version, digest = model_digest(uri)
    wanted = [precision] if precision != "auto" else list(reversed(OV_PRECISIONS))
    native = supported_precisions()
    reasons = []
    passed: list[tuple[OvChoice, Path]] = []
    for p in wanted:
        if p not in native:
            reasons.append(f"{p}: not supported by this CPU ({', '.join(ov_capabilities())})")
            continue
        folder = export_dir(digest, p, root)
        record = read_export(folder)
        if record is None:
            reasons.append(f"{p}: no export in {folder}")
            continue
        try:
            parity = ParityRecord.from_dict(record["parity"])
        except (KeyError, TypeError, ValueError) as exc:
            reasons.append(f"{p}: unreadable export record in {folder} ({exc!r})")
            continue
        at = resolve_threshold(threshold, record.get("info"))[0]
        temp = model_temperature(record.get("info"))
        refused = parity.refusal(at, policy, temp)
        if refused:
            reasons.append(f"{p}: refused, {refused}")
            continue
        card = card_from_record(record)
        passed.append(
            (OvChoice(card, folder / "model.xml", p, parity.summary(at, temp), None), folder)
        )
    if len(passed) > 1:
        speeds = [read_speed(folder) for _, folder in passed]
        if None not in speeds:
            return passed[int(np.argmin(np.asarray(speeds, dtype=float)))][0]
    if passed:
        return passed[0][0]
    why = "; ".join(reasons)
    hint = "" if "refused" in why else " (run `mri-triage export` with a training archive)"
    return OvChoice(None, None, precision, None, f"{version}: {why}{hint}")


# ---------------------------------------------------------------- the one door --------------------


def resolve_runtime(runtime: str) -> str:
    """ "tf" or "openvino" for `runtime` ("auto" = OpenVINO when installed)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "auto":
        return "openvino" if openvino_available() else "tf"
    if runtime == "openvino" and not openvino_available():
        log.warning("OpenVINO is not installed (pip install 'mri-triage[openvino]'): using TF")
        return "tf"
    return runtime


def load_triage_runtime(
    classifier: str | None,
    segmenter: str | None,
    batch: int = TriageSettings.batch,
    precision: str = TriageSettings.precision,
    runtime: str = TriageSettings.runtime,
    ov_precision: str = TriageSettings.ov_precision,
    threshold: float | None = None,
    xla: str = TriageSettings.xla,
) -> Any:
    """Load the two triage models on the chosen runtime (cached per process).

    Args:
        classifier, segmenter: MLflow model URIs or `.keras` files; None = registered champion.
        batch: slices per model call (OpenVINO compiles for exactly this batch).
        precision: Keras dtype policy for models that run on TF.
        runtime: "tf", "openvino" or "auto".
        ov_precision: "f32", "bf16", "int8" or "auto" (fastest verified).
        threshold: the triage threshold the classifier's parity is judged at (None: its logged
            operating point, as `pipeline.triage.rule.resolve_threshold` resolves a run's
            threshold).
        xla: XLA for models that run on TF: "auto" (on a GPU only), "on" or "off".

    Returns:
        `pipeline.triage.inference.TriageModels`; `runtimes` says what each model runs on and
        `notes` why a model fell back to TF.
    """
    from pipeline.triage.inference import load_triage_models

    if resolve_runtime(runtime) == "tf":
        return load_triage_models(classifier, segmenter, batch, precision, xla)
    from pipeline.triage.settings import DEFAULT_CLASSIFIER, DEFAULT_SEGMENTER

    uris = {
        "classifier": classifier or DEFAULT_CLASSIFIER,
        "segmenter": segmenter or DEFAULT_SEGMENTER,
    }
    # Keyed on each model's digest (a local file's bytes, a registry version resolved now), so a
    # model replaced in place or a moved alias is never served stale by a long-lived worker.
    digests = tuple(model_digest(uri)[1] for uri in uris.values())
    key = ("ov", *uris.values(), *digests, int(batch), precision, ov_precision, xla, threshold)
    with _cache_lock:
        if key not in _cache:
            models = _load_openvino(uris, batch, precision, ov_precision, threshold, xla)
            _cache[key] = models
            # The run's tasks ask again with the resolved threshold: same models, no recompile.
            resolved = resolve_threshold(threshold, models.classifier.info)[0]
            _cache[(*key[:-1], resolved)] = models
        return _cache[key]


_cache: dict[tuple, Any] = {}
_cache_lock = threading.Lock()


def _same_version_as_tf(choice: OvChoice, uri: str) -> OvChoice:
    """A local file's version carries its content digest on TF (`load_triage_models`); the same
    here, so the manifest key of a patient does not depend on the runtime."""
    from pipeline.triage.inference import _file_digest  # the one place of that rule

    digest = _file_digest(uri)
    if choice.card is None or not digest:
        return choice
    return replace(choice, card=replace(choice.card, version=f"{choice.card.version}#{digest}"))


def _load_openvino(
    uris: dict[str, str],
    batch: int,
    precision: str,
    ov_precision: str,
    threshold: float | None,
    xla: str = TriageSettings.xla,
) -> Any:
    from pipeline.triage.inference import TriageModels, load_triage_models

    choices = {kind: choose_export(uri, ov_precision, threshold) for kind, uri in uris.items()}
    choices = {kind: _same_version_as_tf(c, uris[kind]) for kind, c in choices.items()}
    notes = []
    for kind, choice in choices.items():
        if choice.card is None:
            notes.append(f"{kind} runs on TensorFlow: {choice.reason}")
            log.warning("%s", notes[-1])
        elif choice.card.kind != kind:
            raise ValueError(f"{uris[kind]!r} is not a {kind} (its export says {choice.card.kind})")
    tf_models = None
    compute = threading.Lock()
    if notes:  # a model without a usable export runs on TF (this imports TensorFlow)
        tf_models = load_triage_models(uris["classifier"], uris["segmenter"], batch, precision, xla)
        compute = tf_models.classify._compute  # still one model call at a time per process
    parts: dict[str, tuple[Any, Any, str]] = {}
    for kind, choice in choices.items():
        if choice.card is not None and choice.xml is not None:
            tail = None
            if batch > TAIL_BATCH:
                tail = compile_ir(choice.xml, choice.precision, TAIL_BATCH)
            compiled = compile_ir(choice.xml, choice.precision, batch)
            pred = OvPredictor(compiled, batch, compute, tail)
            parts[kind] = (choice.card, pred, f"openvino-{choice.precision}")
        else:
            assert tf_models is not None
            tf_pred = tf_models.classify if kind == "classifier" else tf_models.segment
            parts[kind] = (getattr(tf_models, kind), tf_pred, f"tf-{tf_models.precision}")
    return TriageModels(
        classifier=parts["classifier"][0],
        segmenter=parts["segmenter"][0],
        classify=parts["classifier"][1],
        segment=parts["segmenter"][1],
        uris=uris,
        precision=precision,
        runtimes={k: v[2] for k, v in parts.items()},
        notes=notes,
        parity={k: c.parity for k, c in choices.items() if c.parity is not None},
    )
