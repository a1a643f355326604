"""mri-triage core library, in layers that only import downward.

`io` (archives in, outputs out) → `tracking` (the one door to MLflow) → `triage` (the rule,
calibration, metrics, runtimes, inference, runs, reports) → `learn` (datasets, training,
cross-validation) → `cli` (the `mri-triage` command). `flows/` sits between `learn` and `cli`.
See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
