"""A triage run's summary as Markdown (the Prefect artifact): counts and figures, no patient keys.

Pure: a `RunResult` in, a string out. Patient keys stay in the output folder (index.html,
summary.csv); the artifact lives in Prefect's database, which more people read than the folder.
"""

from __future__ import annotations

from pipeline.triage.run import RunResult

_ROWS = (
    ("patients", "Patients"),
    ("patients_done", "Triaged in this run"),
    ("patients_skipped", "Unchanged since the last run"),
    ("failures", "Failed (see summary.csv)"),
    ("tumour_patients_found", "Patients with tumour found"),
    ("slices", "Slices"),
    ("slices_segmented", "Slices segmented"),
    ("slices_per_s", "Slices per second"),
    ("gate_sensitivity_slice", "Gate sensitivity (slices, vs ground truth)"),
    ("dice_patient_mean", "Mean patient Dice (vs ground truth)"),
)


def worklist_markdown(result: RunResult) -> str:
    """Markdown table of the run's figures, its threshold, warnings and where the worklist is."""
    m = result.summary.metrics()
    lines = [
        "# mri-triage run",
        "",
        f"Slices are segmented when P(tumour) > {1.0 - result.threshold:.4g} "
        f"({result.threshold_source})"
        + (
            f" on the slice or on one within {result.gate_context} of it."
            if result.gate_context
            else "."
        ),
        "",
        "| | |",
        "|---|---|",
    ]
    for key, label in _ROWS:
        if key in m:
            value = m[key]
            text = f"{value:.3f}" if key.startswith(("gate", "dice")) else f"{value:,.0f}"
            text = f"{value:.1f}" if key == "slices_per_s" else text
            lines.append(f"| {label} | {text} |")
    lines += ["", f"Worklist: `{result.index_html}`", f"Summary: `{result.summary_csv}`"]
    lines += [f"\n**Warning:** {w}" for w in result.warnings]
    lines.append(f"\nExit code {result.exit_code}. Research use only, not a medical device.")
    return "\n".join(lines) + "\n"
