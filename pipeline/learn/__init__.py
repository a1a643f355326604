"""Training the models and measuring them through triage: datasets, recipes, training, plots.

May import `pipeline.triage` (its rule, calibration, metrics and inference: `evaluate`
cross-validates the whole cascade), `pipeline.tracking`, `pipeline.io` and `models`; never
`pipeline.cli` or `flows`.
"""
