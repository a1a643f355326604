"""`mri-triage average OUT MEMBER MEMBER [...]`: one segmenter file that averages several.

The members (MLflow model URIs or `.keras` files) must be segmenters that read their slices the
same way (the same preprocessing: size, input mode, normalisation); the result is a `.keras` file
with its sidecar, which `triage --segmenter`, `evaluate --no-train --segmenter` and `export` take
like any other segmenter. Nothing is written unless every member qualifies, a member is never
overwritten, and the two output files each replace their old copy in one step.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


class AverageError(ValueError):
    """Members that cannot be averaged, or an output that must not be written."""


def _check_members(loaded: list[Any], names: list[str]) -> dict[str, Any]:
    """The members' common preprocessing (as a dict); AverageError naming what differs."""
    for name, m in zip(names, loaded, strict=True):
        if m.kind != "segmenter":
            raise AverageError(
                f"{name} is a {m.kind}: only segmenters are averaged (a classifier's temperature "
                "and operating point belong to that one model)"
            )
    first = loaded[0].preprocess.to_dict()
    for name, m in zip(names[1:], loaded[1:], strict=True):
        other = m.preprocess.to_dict()
        differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if differ:
            shown = ", ".join(f"{k} {first.get(k)!r} vs {other.get(k)!r}" for k in differ)
            raise AverageError(
                f"{names[0]} and {name} read slices differently ({shown}): average segmenters "
                "trained with the same preprocessing"
            )
    return first


def _output_path(out: str, members: list[str], force: bool) -> Path:
    path = Path(out)
    if path.suffix != ".keras":
        path = path.with_suffix(".keras")
    taken = {Path(m).resolve() for m in members if Path(m).is_file()}
    taken |= {p.with_suffix(".json") for p in taken}
    for target in (path, path.with_suffix(".json")):
        if target.resolve() in taken:
            raise AverageError(f"{target} is one of the members' files: choose another output")
    if not force and (path.exists() or path.with_suffix(".json").exists()):
        raise AverageError(f"{path} exists: pass --force to replace it")
    return path


def write_average(out: str, members: list[str], force: bool = False) -> dict[str, Any]:
    """Average `members` into `out` (`.keras` + sidecar); returns what was written.

    Raises:
        AverageError: fewer than two members, a member that is not a segmenter, members whose
            preprocessing or shapes differ, or an output that is a member or exists (no `force`).
        FileNotFoundError, ValueError: a member that cannot be loaded.
    """
    from models.average import average_segmenters
    from pipeline.io.preprocess import PreprocessConfig
    from pipeline.tracking import load_model, save_local_model

    if len(members) < 2:
        raise AverageError(f"averaging needs at least two segmenters, got {len(members)}")
    path = _output_path(out, members, force)
    loaded = [load_model(m) for m in members]
    preprocess = _check_members(loaded, members)
    try:
        model = average_segmenters([m.model for m in loaded])
    except ValueError as exc:
        raise AverageError(str(exc)) from exc
    archs = [str(m.info.get("architecture", m.model.name)) for m in loaded]
    presets = {m.info.get("preset") for m in loaded}
    info = {
        "architecture": f"mean of {len(loaded)}: {', '.join(archs)}",
        "members": [str(m.info.get("version", m.version)) for m in loaded],
        "member_val_scores": [m.info.get("val_score") for m in loaded],
        **({"preset": presets.pop()} if len(presets) == 1 else {}),
    }
    # Each file replaces its old copy in one step (save_local_model writes atomically).
    save_local_model(model, path, "segmenter", PreprocessConfig.from_dict(preprocess), **info)
    return {"path": str(path), "members": len(loaded), "parameters": int(model.count_params())}


def cli_average(args: Any) -> int:
    """`mri-triage average OUT MEMBER ...`: 0 written, 2 unusable members or output."""
    try:
        done = write_average(args.out, list(args.members), force=args.force)
    except (AverageError, FileNotFoundError, ValueError) as exc:
        print(f"mri-triage average: {exc}", file=sys.stderr)
        return 2
    print(
        f"averaged {done['members']} segmenters ({done['parameters']:,} parameters) into "
        f"{done['path']}; use it as any segmenter: mri-triage triage ARCHIVE --segmenter "
        f"{done['path']}"
    )
    return 0
