"""The `mri-triage` command line: one entry point, one subcommand per job.

Each subcommand's handler lives beside the code it drives and is imported only when that subcommand
runs, so `mri-triage index` never pays for importing TensorFlow, Prefect or MLflow.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.triage.settings import RunOptions

#: Settings `main` puts in the environment before anything imports TensorFlow; a user's own
#: settings win. Offline-friendly ones, and TensorFlow's oneDNN CPU kernels, which TensorFlow turns
#: on by itself only on CPUs with AVX-512 VNNI, bf16 or AMX: on an AVX2-only CPU they train the
#: `cpu` preset's ResNet50 3.4x and ResUNet 2x faster a step (docs/ACCURACY.md, row 38).
OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_ENABLE_ONEDNN_OPTS": "1",
}

#: `--loss` choices of a segmenter (models.losses.LOSSES, named here so `--help` needs no Keras).
SEGMENTER_LOSSES = ["dice", "bce_dice", "bce_batch_dice", "tversky", "focal_tversky"]

EXIT_CODES = (
    "exit codes: 0 done; 1 finished, but some patients failed (see summary.csv); "
    "2 cannot run (bad arguments, missing archive or model, unusable --out)"
)
#: One example per subcommand (shown at the end of its --help).
EXAMPLES = {
    "synth": "mri-triage synth data/synth --patients 8 --format nifti",
    "index": "mri-triage index data/lgg --csv slices.csv",
    "models": "mri-triage models --image-size 256",
    "bench": "mri-triage bench models --batch 16",
    "bench models": "mri-triage bench models --models resunet --repeats 5",
    "bench triage": "mri-triage bench triage data/synth --runtimes tf",
    "train": "mri-triage train classifier data/lgg --preset cpu",
    "train classifier": "mri-triage train classifier data/lgg --preset cpu --backbone vgg16",
    "train segmenter": "mri-triage train segmenter data/lgg --preset cpu --loss focal_tversky",
    "evaluate": "mri-triage evaluate data/lgg --folds 5 --fold 0 --preset cpu",
    "compare": "mri-triage compare --experiment mri-triage-classifier --format csv",
    "triage": "mri-triage triage data/new_scans --out data/triage  # models: the champions",
    "serve": "mri-triage serve data/new_scans --out data/triage --cron '0 2 * * *'",
    "export": "mri-triage export data/lgg --precision f32 int8",
    "demo": "mri-triage demo --out data/demo",
    "average": "mri-triage average data/seg-mean.keras data/a/segmenter.keras "
    "data/b/segmenter.keras",
}


class _Unset(tuple):
    """Defaults that mean "not given": None and False by identity (0 is a real default)."""

    def __contains__(self, value: object) -> bool:
        return value is None or value is False


_UNSET = _Unset()


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every option's default (choices show in the metavar)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        quiet = action.default in _UNSET or action.default == argparse.SUPPRESS
        quiet = quiet or "default" in text.lower()
        if quiet or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".lstrip()


def _finish(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Defaults, choices and an example in every (sub)command's help, recursively."""
    parser.formatter_class = _Formatter
    if path in EXAMPLES:
        parser.epilog = f"example:\n  {EXAMPLES[path]}\n\n{EXIT_CODES}"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                _finish(child, f"{path} {name}".strip())
        elif action.help is None and action.option_strings and action.default not in _UNSET:
            action.help = "default: %(default)s"


def _add_archive(
    p: argparse.ArgumentParser, deprecated_option: bool = False, help: str | None = None
) -> None:
    """ARCHIVE, given the same way (positional) in every command; `--archive` kept as an alias."""
    text = help or "archive root (Kaggle LGG layout, NIfTI folders/files or DICOM)"
    if not deprecated_option:
        p.add_argument("archive", metavar="ARCHIVE", help=text)
        return
    p.add_argument("archive", metavar="ARCHIVE", nargs="?", help=text)
    p.add_argument(
        "--archive", dest="archive_option", metavar="ARCHIVE", help="deprecated: give ARCHIVE"
    )


def _normalise_archive(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fold the deprecated `--archive` into ARCHIVE (exactly one of them)."""
    if not hasattr(args, "archive_option"):
        return
    if args.archive_option is not None:
        if args.archive is not None:
            parser.error("give the archive once (ARCHIVE), not also --archive")
        print("note: --archive is deprecated; give the archive as ARCHIVE", file=sys.stderr)
        args.archive = args.archive_option
    if args.archive is None:
        parser.error("the following arguments are required: ARCHIVE")
    del args.archive_option


def _suggest_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """`mri-triage triag ...` answers with the nearest subcommand (exit 2)."""
    import difflib

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = sub.choices
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None or first in commands:
        return
    near = difflib.get_close_matches(first, list(commands), n=1, cutoff=0.5)
    hint = f"; did you mean '{near[0]}'?" if near else f"; choose from {', '.join(commands)}"
    parser.exit(2, f"mri-triage: unknown command '{first}'{hint}\n")


def _handler(parser: argparse.ArgumentParser, target: str) -> None:
    """Bind a subparser to `module:function`, imported lazily when the subcommand runs."""
    parser.set_defaults(_target=target)


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic brain-MRI archive (phantoms with tumours)")
    p.add_argument("out", help="output folder (created; must be empty or absent)")
    p.add_argument("--patients", type=int, default=8, help="number of patients (default 8)")
    p.add_argument("--format", choices=["kaggle", "nifti", "dicom"], default="kaggle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices", type=int, default=24, help="axial slices per patient (default 24)")
    p.add_argument(
        "--image-size", type=int, default=256, help="in-plane size in pixels (default 256)"
    )
    _handler(p, "pipeline.io.synthetic:cli_synth")


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="index an archive: one row per slice, with a summary")
    p.add_argument("archive", help="archive root (Kaggle LGG layout, NIfTI folders/files, DICOM)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--csv", metavar="PATH", help="also write the per-slice table as CSV")
    _add_series_pattern(p)
    _add_limits(p)
    _handler(p, "pipeline.io.index:cli_index")


def _add_limits(p: argparse.ArgumentParser) -> None:
    """Size limits checked from file headers before decoding (`pipeline.io.quality.Limits`)."""
    from pipeline.io.quality import DEFAULT_LIMITS

    p.add_argument(
        "--max-slice-pixels",
        type=int,
        default=DEFAULT_LIMITS.max_slice_pixels,
        help="largest slice accepted, in pixels",
    )
    p.add_argument(
        "--max-volume-voxels",
        type=int,
        default=DEFAULT_LIMITS.max_volume_voxels,
        help="largest volume accepted, in voxels",
    )
    p.add_argument(
        "--max-patient-mb",
        type=int,
        default=DEFAULT_LIMITS.max_patient_mb,
        help="largest patient accepted: MiB its slices take decoded (slices x height x width x 3 "
        "channels x 4 bytes); a larger one is listed as failed with the reason, so memory per "
        "patient in flight stays bounded",
    )


def _add_series_pattern(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--series-pattern",
        metavar="REGEX",
        help="DICOM: regular expression over SeriesDescription/ProtocolName/SequenceName that "
        "picks each study's FLAIR series (default: FLAIR names or inversion time)",
    )


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="parameter table of every architecture (the paper's Table 3)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--image-size", type=int, default=256)
    _handler(p, "models.summary:cli_models")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from pipeline.triage import settings as s

    p = sub.add_parser("bench", help="benchmarks that print figures (never asserted)")
    bsub = p.add_subparsers(dest="bench_what", required=True)

    m = bsub.add_parser("models", help="batched inference slices/s and GFLOP/s per model")
    m.add_argument("--batch", type=int, default=s.TriageSettings.batch)
    m.add_argument("--image-size", type=int, default=256)
    m.add_argument("--repeats", type=int, default=3)
    m.add_argument("--models", nargs="*", help="subset of model names")
    m.add_argument(
        "--precision",
        choices=[p for p in s.PRECISIONS if p != "auto"],
        default=s.TriageSettings.precision,
    )
    m.add_argument("--json", action="store_true")
    _handler(m, "models.bench:cli_bench_models")
    t = bsub.add_parser("triage", help="end-to-end triage throughput against the models' own time")
    t.add_argument("archive")
    t.add_argument("--classifier", help="model URI or .keras file (default: registered champion)")
    t.add_argument("--segmenter", help="model URI or .keras file (default: registered champion)")
    t.add_argument("--threshold", type=float, default=None, help="default: operating point")
    t.add_argument("--batch", type=int, default=s.TriageSettings.batch)
    t.add_argument("--json", action="store_true")
    t.add_argument("--precision", default=s.TriageSettings.precision, choices=s.PRECISIONS)
    t.add_argument("--loop-slices", type=int, default=64, help="slices in the per-slice loop")
    t.add_argument(
        "--workers",
        type=int,
        default=s.WORKERS,
        help="with --prefetch 0: patients at once, as the flow's threads run them",
    )
    runtimes = [r for r in s.RUNTIMES if r != "auto"]
    t.add_argument("--runtimes", nargs="+", default=runtimes, choices=runtimes)
    ov = list(s.OV_PRECISION_CHOICES)
    t.add_argument(
        "--ov-precisions", nargs="+", default=ov, choices=ov, help="auto: fastest verified one"
    )
    _add_speed_options(t, s.RunOptions())
    t.add_argument(
        "--memory-patients",
        type=int,
        default=10,
        metavar="N",
        help="also run each configuration on the first N patients alone, to compare its peak "
        "memory with the whole archive's (0 skips it; default %(default)s)",
    )
    _handler(t, "pipeline.cli.bench_runtimes:cli_bench_triage")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a classifier or segmenter (Prefect flow, MLflow tracked)"
    )
    tsub = p.add_subparsers(dest="stage", required=True)
    for stage in ("classifier", "segmenter"):
        t = tsub.add_parser(stage, help=f"train the {stage} (Prefect flow, MLflow tracked)")
        _add_archive(t, deprecated_option=True)
        _add_recipe_options(t)
        t.add_argument("--seed", type=int, default=0)
        t.add_argument("--promote", action="store_true", help="move the champion alias regardless")
        t.add_argument("--save", metavar="PATH", help="also save PATH.keras + PATH.json (sidecar)")
        if stage == "classifier":
            t.add_argument("--backbone", choices=["resnet50", "vgg16"], default="resnet50")
            t.add_argument(
                "--weights",
                default="auto",
                help="auto (ImageNet when Keras' cache has the file, else none) | imagenet | "
                "PATH | none (default auto)",
            )
            t.add_argument("--trainable", default="all", help="all | frozen | top:N")
            t.add_argument(
                "--pretrain-epochs",
                type=int,
                default=None,
                help="without weights: first train the backbone for N epochs as a U-Net encoder "
                "on the masks, then fine-tune (0 = off; the cpu preset's value otherwise)",
            )
        else:
            t.add_argument("--arch", choices=["resunet", "resunet_pp"], default="resunet")
            t.add_argument(
                "--loss",
                choices=SEGMENTER_LOSSES,
                default=None,
                help="segmentation loss (default: the preset's, else bce_dice)",
            )
            t.add_argument(
                "--include-empty", action="store_true", help="train on tumour-free slices too"
            )
            t.add_argument(
                "--empty-fraction",
                type=float,
                default=None,
                help="share of sampled tumour-free slices per epoch (cpu/gpu presets: 0.1)",
            )
            t.add_argument(
                "--train-on-val",
                action=argparse.BooleanOptionalAction,
                default=None,
                help="train on the validation patients too and keep the last epoch (--select "
                "last): more data, but no held-out checkpoint choice, and the run's validation "
                "figures are in-sample (it becomes champion only when there is none yet, or "
                "with --promote)",
            )
        _handler(t, "flows.train:cli_train")


def _add_recipe_options(t: argparse.ArgumentParser) -> None:
    """Training options; None = not given, so the preset's value (or the built-in default) holds."""
    from pipeline.io.preprocess import INPUT_MODES, NORMALIZATIONS
    from pipeline.learn.datasets import AUGMENTS
    from pipeline.learn.recipe_fit import OPTIMIZERS, PRECISIONS, SCHEDULES, SELECTS
    from pipeline.learn.recipes import PRESETS
    from pipeline.triage.metrics import MIN_SENSITIVITY

    t.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="named recipe: paper (the MRI paper), cpu (~45 min for both stages on 2 cores), "
        "gpu (256 px, longer, mixed precision); explicit options override its values",
    )
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--batch", type=int, default=None, help="default 16 (or the preset's)")
    t.add_argument("--image-size", type=int, default=None, help="default 256 (or the preset's)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    t.add_argument("--schedule", choices=SCHEDULES, default=None)
    t.add_argument("--warmup", type=float, default=None, help="warm-up share of the steps")
    t.add_argument("--input-mode", choices=INPUT_MODES, default=None)
    t.add_argument("--normalize", choices=NORMALIZATIONS, default=None)
    t.add_argument("--select", choices=SELECTS, default=None, help="checkpoint selection")
    t.add_argument("--precision", choices=PRECISIONS, default=None)
    t.add_argument("--patience", type=int, default=None, help="early-stopping patience")
    t.add_argument(
        "--min-sensitivity",
        type=float,
        default=None,
        help=f"validation slice sensitivity the operating point keeps (default {MIN_SENSITIVITY})",
    )
    t.add_argument(
        "--min-saved",
        type=float,
        default=None,
        metavar="S",
        help="classifier: then raise the operating point as far as it still calls a share S of "
        "validation slices normal (spend the calls-saved target on sensitivity; default off, "
        "0.45 in the cpu and gpu presets; 0 turns it off)",
    )
    t.add_argument(
        "--ema",
        type=float,
        default=None,
        metavar="M",
        help="keep an exponential moving average of the weights (momentum M per step, e.g. "
        "0.99) and validate, select and save it instead of the raw weights (default 0 = off)",
    )
    t.add_argument(
        "--augment",
        choices=AUGMENTS,
        default=None,
        help="training augmentation: standard (flip, rotation, shift, mild brightness/contrast) "
        "or strong (+ scaling, gamma, brightness, contrast, noise; for other scanners)",
    )
    t.add_argument(
        "--modality-dropout",
        type=float,
        default=None,
        metavar="P",
        help="with --input-mode rgb: replace pre-contrast, post-contrast or both by FLAIR on a "
        "share P of the training slices (what an archive stores for a missing sequence), so the "
        "model still works where one is missing; with --input-mode adaptive: show a share P of "
        "the slices that have all three sequences in their FLAIR form (FLAIR of slices k-1, k, "
        "k+1), the form triage gives a slice without them (default 0 = off)",
    )
    t.add_argument(
        "--gate-context",
        type=int,
        default=None,
        metavar="N",
        help="classifier: choose the operating point for a gate that also looks N slices either "
        "side (default 0, or the preset's)",
    )


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    from pipeline.io.preprocess import INPUT_MODES
    from pipeline.learn.datasets import AUGMENTS
    from pipeline.learn.recipes import PRESETS
    from pipeline.triage.settings import TriageSettings

    p = sub.add_parser(
        "evaluate",
        help="patient-level k-fold cross-validation of the whole cascade (or score given models)",
        description="Each fold trains both stages on the other folds' patients and triages its "
        "held-out patients through the triage code; prints AUC, gate sensitivity, calls saved, "
        "Dice and HD95 with 95%% bootstrap intervals, and logs to the mri-triage-evaluate "
        "experiment. Example: mri-triage evaluate data/lgg --folds 5 --fold 0 --preset cpu",
    )
    p.add_argument("archive", help="labelled archive (Kaggle LGG layout or NIfTI with masks)")
    p.add_argument(
        "--out", default="data/evaluate", help="fold models and reports (default %(default)s)"
    )
    p.add_argument("--folds", type=int, default=5, help="k (default %(default)s)")
    p.add_argument("--fold", type=int, default=None, help="run only this fold (0-based)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="default %(default)s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone", choices=["resnet50", "vgg16"], default="resnet50")
    p.add_argument("--arch", choices=["resunet", "resunet_pp"], default="resunet")
    p.add_argument(
        "--weights", default="auto", help="classifier weights: auto | imagenet | PATH | none"
    )
    p.add_argument(
        "--threshold", type=float, default=None, help="default: each fold's operating point"
    )
    p.add_argument("--no-train", action="store_true", help="score --classifier/--segmenter instead")
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse fold models already in --out that were trained on the same split with the "
        "same recipe (an interrupted evaluation goes on where it stopped)",
    )
    p.add_argument("--classifier", help="model URI or .keras file (with --no-train)")
    p.add_argument("--segmenter", help="model URI or .keras file (with --no-train)")
    p.add_argument(
        "--n-boot", type=int, default=2000, help="bootstrap resamples (default %(default)s)"
    )
    p.add_argument("--classifier-size", type=int, help="override the preset's image size")
    p.add_argument("--segmenter-size", type=int, help="override the preset's image size")
    p.add_argument("--classifier-epochs", type=int, help="override the preset's epochs")
    p.add_argument(
        "--classifier-pretrain-epochs",
        type=int,
        metavar="N",
        help="override the preset's mask pre-training epochs of a classifier without ImageNet "
        "weights (see `train classifier --pretrain-epochs`)",
    )
    p.add_argument("--segmenter-epochs", type=int, help="override the preset's epochs")
    p.add_argument(
        "--segmenter-batch",
        type=int,
        metavar="B",
        help="override the preset's segmenter batch size (16 in the cpu preset)",
    )
    p.add_argument(
        "--segmenter-ema",
        type=float,
        metavar="M",
        help="train the folds' segmenters with a moving average of their weights (see `train "
        "segmenter --ema`)",
    )
    p.add_argument(
        "--segmenter-augment",
        choices=AUGMENTS,
        help="the folds' segmenters' training augmentation (see `train segmenter --augment`)",
    )
    p.add_argument(
        "--segmenter-input-mode",
        choices=INPUT_MODES,
        help="what the folds' segmenters see (see `train segmenter --input-mode`; default: the "
        "preset's, flair25d for cpu and gpu)",
    )
    p.add_argument(
        "--segmenter-modality-dropout",
        type=float,
        metavar="P",
        help="the folds' segmenters: see `train segmenter --modality-dropout` (needs "
        "--segmenter-input-mode rgb or adaptive)",
    )
    p.add_argument(
        "--segmenter-loss",
        choices=SEGMENTER_LOSSES,
        help="the folds' segmenters' loss (see `train segmenter --loss`; default: the preset's)",
    )
    p.add_argument(
        "--segmenter-empty-fraction",
        type=float,
        metavar="F",
        help="the folds' segmenters: share of sampled tumour-free slices per epoch (see `train "
        "segmenter --empty-fraction`; 0.1 in the cpu and gpu presets)",
    )
    p.add_argument(
        "--segmenter-train-on-val",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the folds' segmenters also train on the fold's validation patients and keep their "
        "last epoch (see `train segmenter --train-on-val`; on in the cpu and gpu presets, v8)",
    )
    p.add_argument(
        "--segmenter-seed",
        type=int,
        metavar="S",
        help="seed of the segmenters' weights, shuffling and augmentation (default: --seed; the "
        "folds stay as --seed makes them): train the same recipe again to see its run-to-run "
        "spread",
    )
    p.add_argument(
        "--lone-slice-area",
        type=int,
        help="3-D post-processing: drop single-slice components below this area (px of a 256x256 "
        f"slice; default {TriageSettings.lone_slice_area}, 0 keeps them)",
    )
    p.add_argument(
        "--min-volume",
        type=int,
        help="3-D post-processing: drop components below N voxels "
        f"(default {TriageSettings.min_volume})",
    )
    _add_fill_holes(p)
    p.add_argument(
        "--no-tta", action="store_true", help="no mirror averaging of the segmenter (default: on)"
    )
    from pipeline.triage.settings import RunOptions

    _add_runtime_options(p, RunOptions())
    p.add_argument(
        "--gate-context",
        type=int,
        metavar="N",
        help="gate z context: the folds' classifiers choose their operating points with it and "
        "triage uses it (default: the preset's when training, else each classifier's logged one)",
    )
    p.add_argument(
        "--min-saved",
        type=float,
        metavar="S",
        help="the folds' classifiers raise their operating points as far as they still call a "
        "share S of validation slices normal (see `train classifier --min-saved`)",
    )
    _handler(p, "pipeline.learn.evaluate:cli_evaluate")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="the paper's Tables 2-4 and test metrics for tracked runs")
    p.add_argument("--experiment", action="append", help="experiment name (repeatable)")
    p.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    _handler(p, "pipeline.cli.compare:cli_compare")


def _add_triage(sub: argparse._SubParsersAction) -> None:
    from pipeline.triage.rule import DEFAULT_THRESHOLD
    from pipeline.triage.settings import WORKERS

    p = sub.add_parser("triage", help="screen, route and segment every slice of an archive")
    p.add_argument("archive")
    p.add_argument("--out", required=True)
    p.add_argument("--classifier", help="model URI or .keras file (default: registered champion)")
    p.add_argument("--segmenter", help="model URI or .keras file (default: registered champion)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="P(normal) at or above which a slice is normal (default: the classifier's logged "
        f"operating point; {DEFAULT_THRESHOLD} when it has none)",
    )
    p.add_argument("--force", action="store_true", help="redo patients already done")
    p.add_argument("--dask-address", help="tcp://host:port of a Dask scheduler, or 'local'")
    _add_triage_options(p)
    p.add_argument(
        "--workers",
        type=int,
        default=WORKERS,
        help="Dask workers; on threads, patients at once with --prefetch 0 (otherwise one worker "
        "reads ahead of the models and writes behind them)",
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")
    p.add_argument(
        "--log-outputs",
        action="store_true",
        help="also upload the patient-keyed reports and masks to the MLflow run (default: "
        "aggregate metrics only)",
    )
    _handler(p, "flows.triage:cli_triage")
    s = sub.add_parser("serve", help="serve the triage flow as a scheduled Prefect deployment")
    s.add_argument("archive")
    s.add_argument("--out", required=True)
    s.add_argument("--cron", default="0 2 * * *", help="schedule (default: %(default)s)")
    s.add_argument(
        "--timezone",
        default="UTC",
        help="IANA time zone of the cron schedule, e.g. Europe/Berlin (default: %(default)s)",
    )
    s.add_argument("--classifier")
    s.add_argument("--segmenter")
    s.add_argument("--threshold", type=float, default=None, help="default: operating point")
    _add_triage_options(s)
    _handler(s, "flows.triage:cli_serve")


def _add_fill_holes(p: argparse.ArgumentParser) -> None:
    from pipeline.triage.settings import TriageSettings

    p.add_argument(
        "--fill-holes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fill the holes inside each slice's mask before the 3-D clean-up (default "
        f"{'on' if TriageSettings.fill_holes else 'off'})",
    )


def _add_triage_options(p: argparse.ArgumentParser) -> None:
    """The run's options; defaults are `pipeline.triage.settings.RunOptions`' (and
    `TriageSettings`')."""
    from pipeline.triage.settings import PRECISIONS, RunOptions, TriageSettings

    d = RunOptions()
    p.add_argument(
        "--min-component",
        type=int,
        default=d.min_component,
        help="smallest kept mask part (pixels)",
    )
    p.add_argument(
        "--lone-slice-area",
        type=int,
        default=None,
        help="drop 3-D mask components seen on one slice only below this area (pixels of a "
        f"256x256 slice, scaled to the image; default {TriageSettings.lone_slice_area}; "
        "0 keeps them)",
    )
    p.add_argument(
        "--min-volume",
        type=int,
        default=None,
        help="drop 3-D mask components below this many voxels (same scaling; default "
        f"{TriageSettings.min_volume})",
    )
    _add_fill_holes(p)
    p.add_argument(
        "--no-tta",
        dest="tta",
        action="store_false",
        default=None,
        help="segment each flagged slice once, without averaging it with its left-right mirror "
        "(the default mirror averaging costs 2x segmenter work; +0.02 per-patient Dice measured)",
    )
    p.add_argument(
        "--gate-context",
        type=int,
        default=None,
        metavar="N",
        help="a slice is normal only when the slices within N of it are too (default: the N the "
        "classifier's operating point was chosen with; 0 routes each slice on its own)",
    )
    p.add_argument("--batch", type=int, default=d.batch, help="slices per model call")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS)
    _add_series_pattern(p)
    p.add_argument(
        "--write-key-map",
        action="store_true",
        help="DICOM: also write OUT/pseudonym_map.csv (patient key -> StudyInstanceUID)",
    )
    p.add_argument(
        "--log-patient-ids",
        action="store_true",
        help="name patients by their keys in the run's log and Prefect task run names, with "
        "failure reasons (default: by their position in the run, no keys, no reasons)",
    )
    _add_runtime_options(p, d)
    _add_speed_options(p, d)
    _add_limits(p)


def _add_speed_options(p: argparse.ArgumentParser, d: RunOptions) -> None:
    from pipeline.triage.settings import XLA_CHOICES

    p.add_argument(
        "--prefetch",
        type=int,
        default=d.prefetch,
        metavar="N",
        help="patients read ahead of the models while the previous one is written behind them "
        "(at most N + 4 in memory); 0 = --workers patients at once, each start to finish "
        "(default %(default)s)",
    )
    p.add_argument(
        "--xla",
        default=d.xla,
        choices=XLA_CHOICES,
        help="compile the TensorFlow models with XLA; auto = on a GPU only (a GPU with "
        "--precision auto also runs mixed_float16); the GPU path is unverified on real GPUs "
        "(default %(default)s)",
    )


def _add_runtime_options(p: argparse.ArgumentParser, d: RunOptions) -> None:
    from pipeline.triage.settings import OV_PRECISION_CHOICES, RUNTIMES

    p.add_argument(
        "--runtime",
        default=d.runtime,
        choices=RUNTIMES,
        help="inference runtime; auto = OpenVINO when installed and a verified export of the "
        "model exists (`mri-triage export`), else TensorFlow",
    )
    p.add_argument(
        "--ov-precision",
        default=d.ov_precision,
        choices=OV_PRECISION_CHOICES,
        help="OpenVINO precision; auto = the fastest export whose parity passed",
    )


def _add_export(sub: argparse._SubParsersAction) -> None:
    from pipeline.triage.settings import OV_PRECISIONS, TriageSettings

    p = sub.add_parser(
        "export", help="export models once per version to OpenVINO (fp32/bf16/int8) with parity"
    )
    _add_archive(p, deprecated_option=True, help="the models' training archive (calibration)")
    p.add_argument("--classifier", help="model URI or .keras file (default: registered champion)")
    p.add_argument("--segmenter", help="model URI or .keras file (default: registered champion)")
    p.add_argument(
        "--precision", nargs="+", default=list(OV_PRECISIONS), choices=list(OV_PRECISIONS)
    )
    p.add_argument("--calibration-slices", type=int, default=300, help="int8 calibration slices")
    p.add_argument("--parity-slices", type=int, default=200, help="held-out parity slices")
    p.add_argument(
        "--batch", type=int, default=TriageSettings.batch, help="the batch triage will run"
    )
    p.add_argument("--seed", type=int, default=0, help="patient split seed (as training)")
    p.add_argument("--force", action="store_true", help="export again even when cached")
    p.add_argument("--json", action="store_true")
    _handler(p, "pipeline.triage.ov_export:cli_export")


def _add_average(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "average",
        help="one segmenter file that averages several (trained with the same preprocessing)",
        description="Write OUT.keras (and its sidecar): a segmenter whose probability map is the "
        "mean of the members'. Use it wherever a segmenter is taken (triage, evaluate --no-train, "
        "export); it costs each member's inference time. The mean of three segmenters of one fold "
        "scored 0.012 higher mean Dice than v7's on both folds it was tried on (docs/ACCURACY.md, "
        "row 59).",
    )
    p.add_argument("out", help="the averaged segmenter's .keras file (never a member's)")
    p.add_argument("members", nargs="+", help="two or more segmenters: model URIs or .keras files")
    p.add_argument("--force", action="store_true", help="replace OUT when it exists")
    _handler(p, "pipeline.cli.average:cli_average")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on an embedded default: synth, train, triage")
    p.add_argument("--out", default="data/demo")
    _handler(p, "pipeline.cli.demo:cli_demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mri-triage",
        description="Two-stage brain-MRI tumour triage (research use only).",
        epilog=f"example:\n  {EXAMPLES['triage']}\n\n{EXIT_CODES}",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_synth,
        _add_index,
        _add_models,
        _add_bench,
        _add_train,
        _add_evaluate,
        _add_compare,
        _add_triage,
        _add_export,
        _add_average,
        _add_demo,
    ):
        add(sub)
    _finish(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for key, value in OFFLINE_ENV.items():  # here, not at import: importing changes nothing
        os.environ.setdefault(key, value)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    _suggest_command(parser, argv)
    args = parser.parse_args(argv)
    _normalise_archive(parser, args)
    from pipeline.cli.checks import archive_problem, timezone_problem, triage_problem

    problem = None  # checked before Prefect, MLflow or TensorFlow load
    if args.command in ("triage", "serve"):
        problem = triage_problem(args.archive, args.out, args.classifier, args.segmenter)
        problem = problem or timezone_problem(getattr(args, "timezone", None))
    elif args.command != "index" and getattr(args, "archive", None) is not None:
        problem = archive_problem(args.archive)  # index reports a missing archive in its summary
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    # Commands that load TensorFlow import it here, quietly. Triage and serve leave it to
    # `load_triage_models` (quiet too), the one place a model runs on TF: a run on OpenVINO
    # exports never imports it.
    if args.command not in ("synth", "index", "compare", "triage", "serve"):
        from models.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
    module_name, func_name = args._target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
