"""`mri-triage demo`: the main job on an embedded default, needing no data of the user's."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import cli


def cli_demo(args: argparse.Namespace) -> int:
    """Generate a synthetic archive and index it (the triage issue extends this to the full demo)."""
    out = Path(args.out)
    archive = out / "archive"
    if not archive.exists():
        cli.main(["synth", str(archive), "--patients", "8", "--format", "kaggle", "--seed", "0"])
    return cli.main(["index", str(archive)])
