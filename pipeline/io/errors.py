"""The one exception archive readers raise."""

from __future__ import annotations

from pathlib import Path


class ArchiveError(Exception):
    """An archive file cannot be used (unreadable, truncated, wrong shape).

    Attributes:
        path: the offending file or folder.
        reason: what is wrong, in words (without the path).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
