"""`mri-triage compare`: the paper's Tables 2-4 for tracked runs, the paper's figures beside ours.

Each training run logs its own one-row Tables 2, 3 and 4 (`tables/table_N.csv`); this module
stacks them, adds the paper's reported rows and prints them with each run's test metrics. MLflow
is reached only through `pipeline.tracking`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

TABLE_TITLES = {
    "table_2": "Table 2: training and validation accuracy and loss (best epoch, weights restored)",
    "table_3": "Table 3: parameters",
    "table_4": "Table 4: training set-up",
}
TABLE_COLUMNS = {
    "table_2": ["model", "epoch", "train_accuracy", "train_loss", "val_accuracy", "val_loss"],
    "table_3": ["model", "total_params", "trainable_params", "non_trainable_params"],
    "table_4": [
        "model",
        "training_images",
        "image_size",
        "epochs",
        "learning_rate",
        "parameters",
        "training_time_s",
    ],
}
# What the paper reports. Its accuracy, loss, epoch and timing figures could not be found here, so
# those cells stay empty rather than invented. 3929 slices from 110 patients, 256x256, Adam.
PAPER_TRAINING_IMAGES = "3929 (110 patients)"
PAPER: dict[str, dict[str, Any]] = {
    "resnet50": {
        "total_params": 25_817_218,
        "trainable_params": 25_764_098,
        "non_trainable_params": 53_120,
        "learning_rate": 1e-4,
    },
    "vgg16": {
        # The paper's VGG16 row repeats ResNet50's counts; this is the true VGG16 + head count.
        "total_params": 15_371_330,
        "learning_rate": 1e-4,
        "note": "paper's VGG16 row copies ResNet50's counts; true count shown",
    },
    "resunet": {
        "total_params": 1_210_513,
        "trainable_params": 1_206_129,
        "non_trainable_params": 4_384,
        "learning_rate": 1e-5,
    },
}
CLASSIFIER_TEST = [
    "test_accuracy",
    "test_sensitivity",
    "test_specificity",
    "test_precision",
    "test_f1",
    "test_roc_auc",
    "test_ece",
    "test_sensitivity_at_triage",
    "operating_point",
]
SEGMENTER_TEST = [
    "test_dice_patient_mean",
    "test_iou_patient_mean",
    "test_dice_slice_mean",
    "test_dice_tumour_slice_mean",
    "test_dice_patient_min",
    "test_all_dice_patient_mean",
]


def paper_rows(table: str, models: Iterable[str]) -> pd.DataFrame:
    """The paper's row of `table` for each model it reports; cells it does not report stay empty."""
    rows = []
    for model in dict.fromkeys(models):
        if model not in PAPER:
            continue
        fig = PAPER[model]
        row: dict[str, Any] = {"run": "paper", "model": model}
        if table == "table_3":
            row.update({k: fig.get(k) for k in TABLE_COLUMNS["table_3"][1:]})
        elif table == "table_4":
            row.update(
                training_images=PAPER_TRAINING_IMAGES,
                image_size="256x256",
                learning_rate=fig["learning_rate"],
                parameters=fig["total_params"],
            )
        if "note" in fig:
            row["note"] = fig["note"]
        rows.append(row)
    return pd.DataFrame(rows)


def build_tables(
    runs: Sequence[Mapping[str, Any]], tables: Mapping[str, Mapping[str, pd.DataFrame]]
) -> dict[str, pd.DataFrame]:
    """Stack each run's tables, paper rows beside the runs of the same model.

    Args:
        runs: one record per run: `{"run_id", "name", "model", "stage", "metrics": {...}}`.
        tables: `tables[run_id][table_name]` -> that run's one-row table.

    Returns:
        `{"table_2", "table_3", "table_4", "test"}` DataFrames with a leading `run` column.
    """
    out: dict[str, pd.DataFrame] = {}
    models = [str(r["model"]) for r in runs]
    for name, columns in TABLE_COLUMNS.items():
        ours = [
            tables[r["run_id"]][name].assign(run=r["name"])
            for r in runs
            if name in tables.get(r["run_id"], {})
        ]
        stacked = pd.concat([*ours, paper_rows(name, models)], ignore_index=True)
        if stacked.empty:
            stacked = pd.DataFrame(columns=["run", *columns])
        extra = [c for c in stacked.columns if c not in ("run", *columns)]
        keep = ["run", *[c for c in columns if c in stacked.columns], *extra]
        out[name] = stacked[keep].sort_values("model", kind="stable").reset_index(drop=True)
    test_rows = []
    for r in runs:
        keys = CLASSIFIER_TEST if r["stage"] == "classifier" else SEGMENTER_TEST
        row = {"run": r["name"], "model": r["model"], "stage": r["stage"]}
        row.update({k.removeprefix("test_"): r["metrics"].get(k) for k in keys})
        test_rows.append(row)
    out["test"] = pd.DataFrame(test_rows)
    return out


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 1000:
        return f"{value:,}"
    return str(value)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.astype(object).values]
    return "\n".join([head, sep, *body])


def render(tables: Mapping[str, pd.DataFrame], fmt: str = "markdown") -> str:
    """All tables as one text, markdown sections or `# name` + CSV blocks."""
    titles = {**TABLE_TITLES, "test": "Test metrics (held-out test patients)"}
    parts = []
    for name, df in tables.items():
        if fmt == "csv":
            parts.append(f"# {name}\n" + df.to_csv(index=False).rstrip())
        else:
            parts.append(f"### {titles.get(name, name)}\n\n" + to_markdown(df))
    return "\n\n".join(parts) + "\n"


RunTables = dict[str, dict[str, pd.DataFrame]]


def collect(experiments: list[str]) -> tuple[list[dict[str, Any]], RunTables]:
    """Finished runs of `experiments` and their logged tables, read through `pipeline.tracking`."""
    from pipeline import tracking

    found = tracking.search_runs(experiments)
    runs, tables = [], {}
    for _, row in found.iterrows():
        run = tracking.get_run(str(row["run_id"]))
        stage = run["params"].get("stage") or run["experiment"].rsplit("-", 1)[-1]
        runs.append(
            {
                "run_id": run["run_id"],
                "name": run["name"],
                "model": run["params"].get("model", "?"),
                "stage": stage,
                "metrics": run["metrics"],
            }
        )
        have = set(tracking.list_artifacts(run["run_id"], "tables"))
        tables[run["run_id"]] = {
            name: tracking.load_table(run["run_id"], name)
            for name in TABLE_COLUMNS
            if f"tables/{name}.csv" in have
        }
    return runs, tables


def cli_compare(args: argparse.Namespace) -> int:
    """Print Tables 2-4 and test metrics of the tracked training runs."""
    from pipeline import tracking

    experiments = args.experiment or [
        tracking.EXPERIMENTS["classifier"],
        tracking.EXPERIMENTS["segmenter"],
    ]
    runs, tables = collect(experiments)
    if not runs:
        print(
            f"no finished runs in {', '.join(experiments)} at {tracking.store_uri()}; "
            "train one with `mri-triage train classifier|segmenter ARCHIVE ...`",
            file=sys.stderr,
        )
        return 1
    sys.stdout.write(render(build_tables(runs, tables), args.format))
    if args.format == "markdown":
        print(
            "\nPaper rows: parameter counts, learning rates, image size and training-set size as "
            "reported; its accuracy/loss/epochs/time are left empty (not found). VGG16: the "
            "paper's table repeats ResNet50's counts, the true VGG16 count is shown."
        )
    return 0
