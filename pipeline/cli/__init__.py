"""The app on top: the `mri-triage` command, its checks and printing, demo, bench, compare.

The only part of `pipeline` that may import `flows`. `python -m pipeline.cli` runs `main.main`.
"""
