"""Patient-level train/val/test splits: seeded, stratified by tumour, never by slice."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _group_sizes(n: int, val: float, test: float, at_least_one: bool) -> tuple[int, int]:
    """Val and test counts for `n` patients (one each when `at_least_one` and n allows)."""
    n_val, n_test = round(n * val), round(n * test)
    if at_least_one and n >= 3:
        n_val = max(n_val, 1 if val > 0 else 0)
        n_test = max(n_test, 1 if test > 0 else 0)
    while n_val + n_test > max(n - 1, 0) and (n_val or n_test):
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def split_patients(
    table: pd.DataFrame, val: float = 0.15, test: float = 0.15, seed: int = 0
) -> dict[str, list[str]]:
    """Split patients (never slices) into train/val/test, seeded and stratified.

    Patients with tumour slices and patients without are shuffled and split separately, so
    that every split gets tumour slices when there are at least three tumour patients;
    val and test get at least one patient each when their fraction is above 0.

    Args:
        table: an index table (`patient`, `tumour_pixels`, `has_mask`).
        val: fraction of patients for validation.
        test: fraction of patients for testing.
        seed: shuffling seed.

    Returns:
        `{"train": [...], "val": [...], "test": [...]}`, each sorted.

    Raises:
        ValueError: fewer than 3 patients, or fractions outside [0, 1) summing to >= 1.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"need 0 <= val, test and val + test < 1, got val={val}, test={test}")
    labelled = table["has_mask"].astype(bool)
    tumour = (table["tumour_pixels"] > 0) & labelled
    per_patient = tumour.groupby(table["patient"]).any()
    patients = sorted(per_patient.index)
    if len(patients) < 3:
        raise ValueError(
            f"need at least 3 patients to split into train/val/test, got {len(patients)}"
        )
    rng = np.random.default_rng(seed)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for has_tumour in (True, False):
        group = [p for p in patients if bool(per_patient[p]) == has_tumour]
        group = [group[i] for i in rng.permutation(len(group))]
        n_val, n_test = _group_sizes(len(group), val, test, at_least_one=has_tumour)
        splits["val"] += group[:n_val]
        splits["test"] += group[n_val : n_val + n_test]
        splits["train"] += group[n_val + n_test :]
    for name, fraction in (("val", val), ("test", test)):
        if fraction > 0 and not splits[name] and len(splits["train"]) > 1:
            splits[name].append(splits["train"].pop())
    check_no_leakage(splits)
    return {name: sorted(members) for name, members in splits.items()}


def check_no_leakage(splits: dict[str, list[str]]) -> None:
    """Raise `ValueError` if any patient appears in two splits (or twice in one)."""
    seen: dict[str, str] = {}
    for name, members in splits.items():
        for patient in members:
            if patient in seen:
                raise ValueError(
                    f"patient leakage: one patient is in both {seen[patient]!r} and {name!r}"
                )
            seen[patient] = name


def assign_folds(table: pd.DataFrame, folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Patient-level k-fold assignment, seeded and stratified by tumour burden.

    Patients are ordered by their share of tumour slices (tumour-free patients first), cut into
    consecutive strata of `folds` patients, and each stratum is dealt to the folds in a seeded
    random order: every fold gets patients from the whole range of burdens and about N / k patients.

    Args:
        table: an index table (`patient`, `tumour_pixels`, `has_mask`).
        folds: number of folds k (>= 2).
        seed: dealing seed.

    Returns:
        `{patient: fold}` with folds 0..k-1.

    Raises:
        ValueError: k < 2 or fewer patients than folds.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    labelled = table["has_mask"].astype(bool)
    tumour = ((table["tumour_pixels"] > 0) & labelled).astype(float)
    burden = tumour.groupby(table["patient"]).mean()
    patients = sorted(burden.index, key=lambda p: (float(burden[p]), str(p)))
    if len(patients) < folds:
        raise ValueError(f"need at least {folds} patients for {folds} folds, got {len(patients)}")
    rng = np.random.default_rng(seed)
    out: dict[str, int] = {}
    for start in range(0, len(patients), folds):
        stratum = patients[start : start + folds]
        order = rng.permutation(folds)[: len(stratum)]
        out.update({str(p): int(f) for p, f in zip(stratum, order, strict=True)})
    return out


def fold_splits(
    assignment: dict[str, int],
    fold: int,
    val: float = 0.15,
    seed: int = 0,
    tumour_patients: set[str] | None = None,
) -> dict[str, list[str]]:
    """train/val/test for one fold: test = the fold's patients; val = a seeded share of the rest,
    holding at least one of `tumour_patients` (when given and any is left) so validation can
    measure sensitivity.

    Raises:
        ValueError: `fold` not in the assignment, or too few patients left for train and val.
    """
    folds = sorted(set(assignment.values()))
    if fold not in folds:
        raise ValueError(f"fold must be one of {folds}, got {fold}")
    test = sorted(p for p, f in assignment.items() if f == fold)
    rest = sorted(p for p, f in assignment.items() if f != fold)
    n_val = max(1, round(val * len(rest)))
    if len(rest) - n_val < 1:
        raise ValueError(f"too few patients outside fold {fold} for train and validation")
    rng = np.random.default_rng(seed + 1000 * (fold + 1))
    picked = set(rng.choice(rest, size=n_val, replace=False).tolist())
    with_tumour = sorted(p for p in rest if tumour_patients and p in tumour_patients)
    if with_tumour and not picked & set(with_tumour):
        picked.discard(sorted(picked)[0])
        picked.add(str(rng.choice(with_tumour)))
    splits = {
        "train": sorted(p for p in rest if p not in picked),
        "val": sorted(picked),
        "test": test,
    }
    check_no_leakage(splits)
    return splits


def tumour_patient_set(table: pd.DataFrame) -> set[str]:
    """Patients with at least one labelled tumour slice."""
    tumour = (table["tumour_pixels"] > 0) & table["has_mask"].astype(bool)
    return {str(p) for p in table.loc[tumour, "patient"].unique()}
