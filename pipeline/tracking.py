"""The one door to MLflow: store, runs, tables, the Keras epoch logger, model registry, loading.

Nothing else in mri-triage imports mlflow. Every logging helper takes `run_id` explicitly (MLflow's
active run is per thread and Prefect tasks may run in worker threads); `log_keras_model` is the
exception and must run inside `start_run` in the same thread.

Store: `MLFLOW_TRACKING_URI` when set (a team server works unchanged), else
`sqlite:///<repo>/mlflow/mlflow.db` with artifacts in `<repo>/mlflow/artifacts` (`./mlflow/` in the
working directory when mri-triage runs from an installed package). `MRI_TRIAGE_ARTIFACT_ROOT` sets
where new experiments keep their artifacts.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import mlflow

EXPERIMENTS = {
    "classifier": "mri-triage-classifier",
    "segmenter": "mri-triage-segmenter",
    "triage": "mri-triage-triage",
}
REGISTERED_MODELS = {"classifier": "mri-triage-classifier", "segmenter": "mri-triage-segmenter"}
CHAMPION = "champion"
MODEL_ARTIFACT = "model"
CONFIG_ARTIFACT = "model_config.json"


# ---------------------------------------------------------------- store ---------------------------


def repo_root() -> Path | None:
    """The source checkout holding this file, or None when running from an installed package."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "pipeline" / "cli" / "main.py").is_file():
        return root
    return None


def _local_store_dir() -> Path:
    root = repo_root()
    return (root if root is not None else Path.cwd()) / "mlflow"


def store_uri() -> str:
    """The tracking store, without configuring MLflow: `MLFLOW_TRACKING_URI`, else a URI the
    caller set with `mlflow.set_tracking_uri`, else the project's SQLite file (folder created)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if mlflow.is_tracking_uri_set():
        return mlflow.get_tracking_uri()
    store = _local_store_dir()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def _client() -> MlflowClient:
    """A client on `store_uri()` for reading (MLflow's process-wide settings are left alone)."""
    uri = store_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def configure_tracking() -> str:
    """Point MLflow (tracking and registry) at `store_uri()` and return it. Only code that writes
    through MLflow's fluent API (runs, model logging) calls this; readers use `_client()`."""
    uri = store_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Where new experiments keep artifacts: env override, beside a SQLite file, else server's."""
    env = os.environ.get("MRI_TRIAGE_ARTIFACT_ROOT")
    if env:
        base = Path(env)
    elif uri.startswith("sqlite:///"):
        base = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
    else:
        return None
    path = base.resolve() / experiment
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def experiment_id(name: str) -> str:
    """Id of the experiment `name`, created (with the project's artifact location) if absent."""
    uri = configure_tracking()
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    try:
        location = _artifact_location(uri, name)
        exp_id = str(client.create_experiment(name, artifact_location=location))
        from pipeline.tracking_meta import describe_experiment

        describe_experiment(client, exp_id, name)  # description, model-training kind
        return exp_id
    except MlflowException:  # created meanwhile by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


def run_name(model: str, when: datetime | None = None) -> str:
    """`<model>-YYYY-MM-DDTHH-MM`: the model and the date, never a patient."""
    return f"{model}-{(when or datetime.now()):%Y-%m-%dT%H-%M}"


# ---------------------------------------------------------------- runs ----------------------------


@contextlib.contextmanager
def start_run(
    experiment: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:
    """Open an MLflow run in `experiment` (created if needed) and yield its run id.

    The run ends FINISHED on normal exit, FAILED on any exception (KILLED on Ctrl-C), which is
    re-raised: a run is never left RUNNING. With `parent_run_id` (an active run of this thread)
    the run is nested under it, as the MLflow UI shows child runs.
    """
    exp_id = experiment_id(experiment)
    all_tags = _str_dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = mlflow.start_run(
        experiment_id=exp_id,
        run_name=run_name,
        tags=all_tags,
        nested=mlflow.active_run() is not None,
    )
    run_id = run.info.run_id
    try:
        if params:
            log_params(run_id, params)
        yield run_id
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException as exc:
        with contextlib.suppress(Exception):
            MlflowClient().set_tag(run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def _str_dict(values: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v)[:6000] for k, v in values.items()}


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    """Log params (values stringified; None as 'none'). Never pass patient keys here."""
    clean = {k: ("none" if v is None else v) for k, v in params.items()}
    for key, value in _str_dict(clean).items():
        MlflowClient().log_param(run_id, key, value)


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    for key, value in _str_dict(tags).items():
        MlflowClient().set_tag(run_id, key, value)


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics (non-finite values are skipped: MLflow stores NaN poorly in SQL)."""
    client = MlflowClient()
    for key, value in metrics.items():
        if value is not None and np.isfinite(float(value)):
            client.log_metric(run_id, key, float(value), step=step or 0)


def log_table(run_id: str, table: pd.DataFrame, name: str) -> None:
    """Log `table` as an MLflow table `tables/<name>.json` and a CSV artifact
    `tables/<name>.csv`."""
    client = MlflowClient()
    client.log_table(run_id, data=table, artifact_file=f"tables/{name}.json")
    client.log_text(run_id, table.to_csv(index=False), f"tables/{name}.csv")


def log_dict(run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
    MlflowClient().log_dict(run_id, dict(data), artifact_file)


def log_artifact(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    MlflowClient().log_artifact(run_id, str(path), artifact_path)


def epoch_logger(run_id: str, prefix: str = "") -> Any:
    """A Keras callback logging every `logs` entry (loss, accuracy, val_*, lr) at step = epoch.

    The one channel for per-epoch metrics: never combine with `mlflow.keras.autolog`.
    """
    import keras

    client = MlflowClient()

    class MlflowEpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            for key, value in (logs or {}).items():
                with contextlib.suppress(TypeError, ValueError):
                    v = float(value)
                    if np.isfinite(v):
                        client.log_metric(run_id, f"{prefix}{key}", v, step=epoch)

    return MlflowEpochLogger()


def metric_history(run_id: str, key: str) -> list[float]:
    """Values of `key` in step order."""
    hist = sorted(_client().get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.value for m in hist]


def get_run(run_id: str) -> dict[str, Any]:
    """`{"run_id", "name", "status", "experiment", "params", "metrics", "tags"}` of one run."""
    client = _client()
    run = client.get_run(run_id)
    exp = client.get_experiment(run.info.experiment_id)
    return {
        "run_id": run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "experiment": exp.name if exp else "",
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
    }


def search_runs(experiments: list[str], status: str | None = "FINISHED") -> pd.DataFrame:
    """Runs of the named experiments (missing ones ignored), newest first, as MLflow's flat table.

    Columns: run_id, status, start_time, experiment, tags.mlflow.runName, params.*, metrics.*.
    """
    client = _client()
    frames = []
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            continue
        df = _runs_frame(client, str(exp.experiment_id))
        if len(df):
            frames.append(df.assign(experiment=name))
    if not frames:
        return pd.DataFrame(columns=["run_id", "status", "experiment"])
    runs = pd.concat(frames, ignore_index=True)
    if status:
        runs = runs[runs["status"] == status]
    return runs.sort_values("start_time", ascending=False).reset_index(drop=True)


def _runs_frame(client: MlflowClient, experiment_id: str) -> pd.DataFrame:
    """Every active run of one experiment as `mlflow.search_runs`' flat table (all pages)."""
    rows, token = [], None
    while True:
        page = client.search_runs([experiment_id], page_token=token)
        for run in page:
            info, data = run.info, run.data
            rows.append(
                {
                    "run_id": info.run_id,
                    "experiment_id": info.experiment_id,
                    "status": info.status,
                    "artifact_uri": info.artifact_uri,
                    "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True),
                    "end_time": pd.to_datetime(info.end_time, unit="ms", utc=True),
                    **{f"metrics.{k}": v for k, v in data.metrics.items()},
                    **{f"params.{k}": v for k, v in data.params.items()},
                    **{f"tags.{k}": v for k, v in data.tags.items()},
                }
            )
        token = page.token
        if not token:
            return pd.DataFrame(rows)


def load_table(run_id: str, name: str) -> pd.DataFrame:
    """The CSV table `tables/<name>.csv` logged by `log_table`."""
    with tempfile.TemporaryDirectory() as tmp:
        uri = store_uri()
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"tables/{name}.csv", dst_path=tmp,
            tracking_uri=uri, registry_uri=uri,
        )  # fmt: skip
        return pd.read_csv(path)


def list_artifacts(run_id: str, path: str | None = None) -> list[str]:
    return [a.path for a in _client().list_artifacts(run_id, path)]


# ---------------------------------------------------------------- models --------------------------


def _preprocess_dict(preprocess: Any) -> dict[str, Any]:
    return dict(preprocess) if isinstance(preprocess, Mapping) else dict(preprocess.to_dict())


def _signature(model: Any) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(shape: Any) -> Any:
        return TensorSpec(np.dtype(np.float32), [-1 if d is None else int(d) for d in shape])

    return ModelSignature(
        inputs=Schema([spec(model.input_shape)]), outputs=Schema([spec(model.output_shape)])
    )


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("tensorflow", "keras", "numpy", "mlflow"):
        with contextlib.suppress(PackageNotFoundError):
            reqs.append(f"{pkg}=={version(pkg)}")
    return reqs


def log_keras_model(
    run_id: str, model: Any, kind: str, preprocess: Any, **info: Any
) -> dict[str, Any]:
    """Log `model` (inside `start_run`, same thread) with its signature and config; register it.

    The model config `{"kind", "preprocess", **info}` (e.g. `operating_point`) goes into the MLmodel
    metadata and beside the run as `model_config.json`.

    Returns:
        `{"model_uri" (runs:/...), "registered_model", "version"}`.
    """
    import mlflow.keras

    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        raise RuntimeError("log_keras_model must run inside start_run, in the same thread")
    if kind not in REGISTERED_MODELS:
        raise ValueError(f"kind must be one of {sorted(REGISTERED_MODELS)}, got {kind!r}")
    config = json.loads(
        json.dumps({"kind": kind, "preprocess": _preprocess_dict(preprocess), **info}, default=str)
    )
    name = REGISTERED_MODELS[kind]
    model_info = mlflow.keras.log_model(
        without_optimizer(model),
        name=MODEL_ARTIFACT,
        signature=_signature(model),
        metadata=config,
        registered_model_name=name,
        # Explicit requirements: MLflow's own inference re-imports the model in a subprocess (slow).
        pip_requirements=_requirements(),
    )
    log_dict(run_id, config, CONFIG_ARTIFACT)
    return {
        "model_uri": f"runs:/{run_id}/{MODEL_ARTIFACT}",
        "registered_model": name,
        "version": str(model_info.registered_model_version),
    }


def promote_if_better(
    kind: str,
    version: str,
    metric: str,
    score: float,
    *,
    force: bool = False,
    in_sample: bool = False,
) -> dict[str, Any]:
    """Move the `champion` alias to `version` when it beats the champion's `metric` on validation.

    The first version always becomes champion; `force` (`--promote`) moves it regardless. The
    score is kept as a version tag so later comparisons need no run lookup. `in_sample`: the
    score was measured on patients the model trained on (`train_on_val`), so it is compared with
    nothing: the version becomes champion only when there is none yet or with `force`, and its
    score is tagged `val_<metric>_in_sample`, which a later held-out score does not compare with.

    Returns:
        `{"champion": bool, "previous": version or None, "previous_score": float or None}`.
    """
    configure_tracking()
    client = MlflowClient()
    name = REGISTERED_MODELS[kind]
    suffix = "_in_sample" if in_sample else ""
    client.set_model_version_tag(name, version, f"val_{metric}{suffix}", str(score))
    previous, previous_score = None, None
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        previous = str(current.version)
        tag = current.tags.get(f"val_{metric}")
        previous_score = float(tag) if tag is not None else None
    except MlflowException:
        current = None
    better = previous_score is None or not np.isfinite(previous_score) or score > previous_score
    promote = force or current is None or (not in_sample and np.isfinite(score) and better)
    if promote and previous != version:
        client.set_registered_model_alias(name, CHAMPION, version)
    return {"champion": promote, "previous": previous, "previous_score": previous_score}


@dataclass
class LoadedModel:
    """A model ready for inference with what is needed to preprocess its input."""

    model: Any  # keras.Model
    preprocess: Any  # pipeline.io.preprocess.PreprocessConfig
    kind: str  # "classifier" | "segmenter"
    version: str  # "mri-triage-classifier/3", "runs:/<id>/model" or the file name
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def extra(self) -> dict[str, Any]:
        """Alias of `info` (the name used in docs/ARCHITECTURE.md)."""
        return self.info


def _register_custom_objects() -> None:
    # Importing registers the custom losses/metrics/layers with Keras' serialisation.
    import importlib

    for module in ("models", "models.losses", "models.layers", "models.blocks"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def _build_loaded(model: Any, config: Mapping[str, Any], version: str) -> LoadedModel:
    from pipeline.io.preprocess import PreprocessConfig

    config = dict(config)
    kind = str(config.pop("kind", "") or _guess_kind(model))
    pre = config.pop("preprocess", None)
    if pre is None:
        pre = {"image_size": int(model.input_shape[1])}
    return LoadedModel(model, PreprocessConfig.from_dict(dict(pre)), kind, version, config)


def _guess_kind(model: Any) -> str:
    return "classifier" if len(model.output_shape) == 2 else "segmenter"


def _version_of(uri: str, client: MlflowClient) -> str:
    if not uri.startswith("models:/"):
        return uri
    ref = uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return f"{name}/{client.get_model_version_by_alias(name, alias).version}"
    return ref


def load_model(uri_or_path: str) -> LoadedModel:
    """Load a model for inference from `models:/name@alias`, `models:/name/N`, `runs:/<id>/model` or
    a local `.keras` file (config from the sidecar `<file>.json`; inferred from shapes when absent).

    Raises:
        FileNotFoundError: a local file that does not exist.
        ValueError: a URI MLflow cannot resolve (message says which).
    """
    import keras

    _register_custom_objects()
    if "://" not in uri_or_path and not uri_or_path.startswith(("models:/", "runs:/")):
        path = Path(uri_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        model = keras.saving.load_model(path, compile=False)
        sidecar = path.with_suffix(".json")
        config = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        return _build_loaded(model, config, path.name)

    import mlflow.keras
    from mlflow.models import Model

    store = store_uri()
    try:
        version = _version_of(uri_or_path, _client())
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri_or_path, dst_path=tmp, tracking_uri=store, registry_uri=store
            )
            meta = Model.load(str(Path(local) / "MLmodel")).metadata or {}
            model = mlflow.keras.load_model(local, load_model_kwargs={"compile": False})
    except MlflowException as exc:
        raise ValueError(f"cannot load model {uri_or_path!r}: {exc.message}") from exc
    return _build_loaded(model, meta, version)


def model_reference(uri: str) -> tuple[str, bytes]:
    """`(version, MLmodel file bytes)` of a registry or run model URI, without loading the model.

    The MLmodel file carries MLflow's model UUID and the logged config, so together with the
    version it identifies the artifact (used to key exported copies; no TensorFlow imported).

    Raises:
        ValueError: a URI MLflow cannot resolve (message says which).
    """
    store, client = store_uri(), _client()
    try:
        version = _version_of(uri, client)
        source = uri
        if uri.startswith("models:/"):
            name, number = version.rsplit("/", 1)
            source = client.get_model_version_download_uri(name, number)
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{source.rstrip('/')}/MLmodel", dst_path=tmp,
                tracking_uri=store, registry_uri=store,
            )  # fmt: skip
            return version, Path(local).read_bytes()
    except MlflowException as exc:
        raise ValueError(f"cannot resolve model {uri!r}: {exc.message}") from exc


def without_optimizer(model: Any) -> Any:
    """An uncompiled copy of `model` with the same weights, so a saved file holds no optimizer
    state (Adam's two moments triple a ResNet50 file; triage never resumes training)."""
    if not getattr(model, "compiled", False):
        return model
    # From the architecture config alone (no compile config, unlike `keras.models.clone_model`).
    clone = model.__class__.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return clone


def save_local_model(model: Any, path: str | Path, kind: str, preprocess: Any, **info: Any) -> Path:
    """Save `model` as `<path>.keras` plus the sidecar `<path>.json` (`{"kind", "preprocess"}`).

    Each file replaces its old copy in one step (`atomic_write`): an interrupted save leaves the
    old file whole, never half a model.

    Returns:
        The `.keras` path.
    """
    from pipeline.io.manifest import atomic_write, atomic_write_text

    path = Path(path)
    if path.suffix != ".keras":
        path = path.with_suffix(".keras")
    atomic_write(path, without_optimizer(model).save)
    config = {"kind": kind, "preprocess": _preprocess_dict(preprocess), **info}
    atomic_write_text(path.with_suffix(".json"), json.dumps(config, indent=2, default=str))
    return path


# ---------------------------------------------------------------- triage runs (issue 5) -----------


#: Outputs that carry identities stay out of MLflow: DICOM SEG files hold the source's patient and
#: study modules, the pseudonym map links keys to StudyInstanceUIDs.
_PRIVATE_SUFFIXES = (".dcm",)
_PRIVATE_NAMES = ("pseudonym_map.csv",)


def _private(path: Path) -> bool:
    return path.suffix.lower() in _PRIVATE_SUFFIXES or path.name in _PRIVATE_NAMES


def log_triage_run(
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    out_dir: str | Path,
    tags: Mapping[str, Any] | None = None,
    include: Sequence[str] | None = None,
    started: float | None = None,
) -> str:
    """One MLflow run in the triage experiment: params, metrics, and (opt-in) the run's outputs.

    The run is named by date only; `params`/`metrics` must hold no patient keys. Files of the
    output folder are uploaded under `triage/` only when named in `include` (top-level names in
    `out_dir`: the run's own reports and patient folders; `None` = every file): patient-keyed
    outputs leave the machine only with `--log-outputs`. The lock file, staging leftovers and
    private files are never logged.

    Args:
        started: when the work began (`time.time()`), so the run's duration spans the work
            rather than the upload; None = now.

    Returns:
        The run id.
    """
    out = Path(out_dir)
    keep = None if include is None else set(include)
    exp_id = experiment_id(EXPERIMENTS["triage"])
    began = datetime.fromtimestamp(started) if started is not None else datetime.now()
    client = MlflowClient()
    run = client.create_run(
        exp_id,
        start_time=int(began.timestamp() * 1000),
        tags=_str_dict(tags or {}),
        run_name=run_name("triage", began),
    )
    run_id = run.info.run_id
    try:
        log_params(run_id, params)
        log_metrics(run_id, metrics)
        for item in sorted(out.rglob("*")):
            rel = item.relative_to(out)
            if any(p.startswith(".") for p in rel.parts) or not item.is_file() or _private(item):
                continue
            if keep is not None and rel.parts[0] not in keep:
                continue  # not this run's to upload (or outputs not opted in)
            client.log_artifact(run_id, str(item), "/".join(("triage", *rel.parts[:-1])))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            client.set_tag(run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
            client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
