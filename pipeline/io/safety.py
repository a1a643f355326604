"""Inputs are sacred, keys are data: where a run may write, and how user strings leave it.

Pure functions, no I/O except `check_out_dir` (which only resolves paths). Patient keys come from
folder and file names in the user's archive, so they can hold anything a file name can (`..`,
control characters, bytes that are not UTF-8, the names of the run's own files). They are turned
into safe output folder names here, and into printable text for reports, in this one place.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from pipeline.io.manifest import RUN_FILES

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME = 96
_PIXEL_DUMP = re.compile(r"\[[\d\s.,eE+\-\[\]]{24,}\]")
_CSV_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


class UnsafeOutputError(ValueError):
    """`--out` would put the run's writes on top of the archive (or the archive inside them)."""


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out_dir(archive: str | Path, out: str | Path, sources: Iterable[str] = ()) -> Path:
    """Refuse an output folder equal to, inside, or containing the archive or a patient folder.

    Paths are compared after resolving symbolic links (of the part that exists), so a link to the
    archive is refused like the archive itself. Nothing is created.

    Args:
        archive: the archive root.
        out: the requested output folder (may not exist yet).
        sources: patient folders or files (`source` column of the index), checked the same way.

    Returns:
        The resolved output folder.

    Raises:
        UnsafeOutputError: the two overlap; the message says how.
    """
    out_r = Path(out).resolve()
    for what, src in [("the archive", str(archive)), *(("a patient folder", s) for s in sources)]:
        src_r = Path(src).resolve()
        if out_r == src_r:
            raise UnsafeOutputError(f"--out {out} is {what} ({src}); choose another folder")
        if _within(out_r, src_r):
            raise UnsafeOutputError(f"--out {out} is inside {what} ({src}); choose another folder")
        if _within(src_r, out_r):
            raise UnsafeOutputError(f"--out {out} contains {what} ({src}); choose another folder")
    return out_r


def display_text(text: str, limit: int = 500) -> str:
    """Printable form of a user string: undecodable bytes as `\\xNN`, control characters as
    `\\uNNNN`, at most `limit` characters. Safe to print, to write as UTF-8 and to escape."""
    if any("\ud800" <= c <= "\udfff" for c in text):
        raw = text.encode("utf-8", "surrogateescape" if _escaped_only(text) else "backslashreplace")
        text = raw.decode("utf-8", "backslashreplace")
    out = "".join(
        f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cc", "Cf", "Cs") else c for c in text
    )
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _escaped_only(text: str) -> bool:
    """True when every surrogate in `text` stands for an undecodable byte (`surrogateescape`)."""
    return all(not "\ud800" <= c <= "\udfff" or "\udc80" <= c <= "\udcff" for c in text)


def output_name(key: str) -> str:
    """The output folder (and mask file prefix) of a patient key: never a path, never hidden.

    Keys made only of `[A-Za-z0-9._-]`, not starting with `.` or `-`, and not one of the run's file
    names, are kept as they are; any other key gets its unsafe characters replaced by `_` and a
    short hash of the original key appended, so two different keys never share a folder.
    """
    cleaned = _SAFE.sub("_", key).lstrip(".-")[:_MAX_NAME]  # not hidden, not an option
    if cleaned and cleaned == key and key.lower() not in RUN_FILES:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{cleaned or 'patient'}-{digest}"


def csv_cell(value: object) -> object:
    """A CSV cell a spreadsheet will not run: text starting with = + - @ (or tab/CR) is prefixed
    with `'`. Numbers are left alone (a negative number is data, not a formula)."""
    if isinstance(value, str):
        value = display_text(value, limit=2000)
        if value.startswith(_CSV_TRIGGERS):
            return "'" + value
    return value


def clean_reason(exc: BaseException, limit: int = 300) -> str:
    """A one-line failure reason for reports: type and message, no array dumps, bounded."""
    message = " ".join(str(exc).split())
    message = _PIXEL_DUMP.sub("[…]", message)
    return display_text(f"{type(exc).__name__}: {message}", limit)
