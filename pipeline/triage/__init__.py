"""Applying the models to an archive: the routing rule, runtimes, inference, runs, reports.

Also what a triage is judged by: the gate's calibration (`calibration`) and `metrics`. May import
`pipeline.tracking`, `pipeline.io` and `models`; never `pipeline.learn`, `pipeline.cli` or `flows`,
so a triage run never loads the training code. The rule itself is `rule` (pure functions).
"""
