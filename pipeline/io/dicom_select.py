"""Which series of a DICOM study is FLAIR, and the study's pseudonymous patient key.

FLAIR rules (first that applies wins; recorded in the report):
1. `--series-pattern REGEX` given: the series whose SeriesDescription, ProtocolName or SequenceName
   matches it (case-insensitive); nothing else is considered.
2. Default: the names match `DEFAULT_FLAIR_PATTERN` (FLAIR, dark fluid, T2 TIRM, T2F, ...) and
   do not say T1 (a T1-FLAIR is a T1 contrast); an InversionTime below `MIN_FLAIR_TI_MS`
   contradicts the name and rules the series out.
3. No name matches: an inversion-recovery acquisition with InversionTime in
   [`MIN_FLAIR_TI_MS`, `MAX_FLAIR_TI_MS`] and EchoTime >= `MIN_FLAIR_TE_MS` (fluid nulled,
   T2 weighted) is FLAIR by its parameters.
Among several candidates: the one matched by name and parameters, then the most images, then the
highest SeriesNumber (a repeat is usually the better one). No candidate: the study is reported.

Patient key: `DCM-` + the first 16 hex digits of HMAC-SHA256(salt, StudyInstanceUID). The salt is
`$MRI_TRIAGE_SALT` when set, else the file `$XDG_CONFIG_HOME/mri-triage/salt` (default
`~/.config/mri-triage/salt`), created with a random salt (mode 0600) on first use. The same salt
gives the same key for a study on every run; without it the key cannot be traced back.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.io.dicom import SeriesHeader

DEFAULT_FLAIR_PATTERN = r"flair|dark[\s_-]*fluid|t2[\s_-]*tirm|\bt2[\s_-]*f\b|\bda[\s_-]*fl\b"
_T1_WORDS = re.compile(r"\bt1|t1[\s_-]*w", re.IGNORECASE)
MIN_FLAIR_TI_MS, MAX_FLAIR_TI_MS, MIN_FLAIR_TE_MS = 1500.0, 3500.0, 60.0
SALT_ENV = "MRI_TRIAGE_SALT"


@dataclass(frozen=True)
class Selection:
    """The chosen FLAIR series of a study and why.

    Attributes:
        series: the chosen series, or None when no series qualifies.
        rule: the rule in words ("name matches /flair/; InversionTime 2500 ms", ...).
        candidates: how many series qualified.
        considered: every image series of the study (`SeriesHeader.describe()` of each).
    """

    series: SeriesHeader | None
    rule: str
    candidates: int
    considered: tuple[dict, ...]


def _names(header: SeriesHeader) -> str:
    return " | ".join(filter(None, (header.description, header.protocol, header.sequence)))


def _by_parameters(header: SeriesHeader) -> bool:
    ti, te = header.inversion_time, header.echo_time
    return (
        ti is not None
        and MIN_FLAIR_TI_MS <= ti <= MAX_FLAIR_TI_MS
        and (te is None or te >= MIN_FLAIR_TE_MS)
    )


def _qualifies(header: SeriesHeader, pattern: str | None) -> tuple[int, str] | None:
    """(score, rule in words) when the series qualifies as FLAIR, else None."""
    names = _names(header)
    ti = header.inversion_time
    ti_text = f"; InversionTime {ti:g} ms" if ti is not None else ""
    if pattern is not None:
        hit = re.search(pattern, names, re.IGNORECASE)
        return (
            (2, f"--series-pattern /{pattern}/ matches {hit.group(0)!r}{ti_text}") if hit else None
        )
    hit = re.search(DEFAULT_FLAIR_PATTERN, names, re.IGNORECASE)
    if hit:
        if _T1_WORDS.search(names) or (ti is not None and ti < MIN_FLAIR_TI_MS):
            return None
        return (2 if _by_parameters(header) else 1, f"name matches {hit.group(0)!r}{ti_text}")
    if _by_parameters(header):
        return (0, f"by acquisition: InversionTime {ti:g} ms, EchoTime {header.echo_time} ms")
    return None


def select_flair(series: Sequence[SeriesHeader], pattern: str | None = None) -> Selection:
    """Choose the FLAIR series of one study by the rules above.

    Args:
        series: the study's image series.
        pattern: `--series-pattern` regular expression (replaces the default rules), or None.

    Raises:
        ValueError: `pattern` is not a valid regular expression.
    """
    if pattern is not None:
        re.compile(pattern)
    scored = []
    for header in series:
        if header.modality.upper() not in ("MR", ""):
            continue
        got = _qualifies(header, pattern)
        if got is not None:
            scored.append((got[0], len(header.frames), header.number or 0, got[1], header))
    considered = tuple(h.describe() for h in sorted(series, key=lambda h: h.number or 0))
    if not scored:
        rule = f"--series-pattern /{pattern}/" if pattern else "FLAIR name or inversion time"
        return Selection(None, f"no series matches {rule}", 0, considered)
    scored.sort(key=lambda s: s[:3], reverse=True)
    best = scored[0]
    return Selection(best[4], best[3], len(scored), considered)


def _config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mri-triage"


def load_salt() -> bytes:
    """The pseudonym salt: `$MRI_TRIAGE_SALT`, else the user's config file (created if absent)."""
    env = os.environ.get(SALT_ENV)
    if env:
        return env.encode()
    path = _config_dir() / "salt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
    return path.read_text(encoding="utf-8").strip().encode()


def pseudonym(study_uid: str, salt: bytes) -> str:
    """Stable key of a study: `DCM-` + 16 hex digits of HMAC-SHA256(salt, StudyInstanceUID)."""
    digest = hmac.new(salt, study_uid.encode(), hashlib.sha256).hexdigest()
    return f"DCM-{digest[:16]}"
