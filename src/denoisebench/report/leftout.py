"""Columns that hold nothing for the runs in a report, left out with one line saying why.

Decided by the figures, never by the kind of run: a column is left out of a displayed table when
every row of it is missing (the reasons are the records'), empty, or a figure that is the same by
definition (scaling efficiency of single-device groups, per-device throughput of one device).
The CSV tables keep every column. In the report the lines follow their table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import pandas as pd

from denoisebench.report.groups import METRIC
from denoisebench.report.terms import SETUP

IDENTITY_COLUMNS = {"engine": "engine", "batch/device": "batch per device", "setup": "setup"}
"""Group-table columns (display name -> words) that say nothing when every row shares them."""
IDENTITY_MEANING = {
    ("engine", "native"): "torchrun, tf.distribute; not Horovod",
    ("engine", "horovod"): "horovodrun",
    ("setup", None): SETUP,
}
"""(column, value or None for any) -> what the shared value means, said beside it."""
ROW_KEYS = ("framework", "devices", "repeats", "run")
"""Columns that name a row: never left out."""
_MISSING = re.compile(r"^missing(?: \((?P<why>.*)\))?$", re.DOTALL)


def missing_reason(cell: object) -> str | None:
    """The reason of a 'missing (reason)' cell ('not recorded' without one); None: a value."""
    match = _MISSING.match(str(cell))
    if match is None:
        return None
    return match.group("why") or "not recorded"


def _joined(reasons: Iterable[str]) -> str:
    return "; ".join(dict.fromkeys(reasons))  # unique, in order


def _lines(dropped: dict[str, str]) -> list[str]:
    """One line per reason: the columns that share it, then the reason."""
    by_reason: dict[str, list[str]] = {}
    for column, why in dropped.items():
        by_reason.setdefault(why, []).append(column)
    return [f"{', '.join(columns)} left out: {why}." for why, columns in by_reason.items()]


def empty_columns(frame: pd.DataFrame, keep: Sequence[str] = ROW_KEYS) -> dict[str, str]:
    """Columns whose every cell is missing or blank, each with why (the cells' reasons)."""
    dropped: dict[str, str] = {}
    if frame.empty:
        return dropped
    for column in frame.columns:
        if column in keep:
            continue
        cells = [str(c).strip() for c in frame[column]]
        if all(not c for c in cells):
            dropped[column] = "empty in every row"
            continue
        reasons = [missing_reason(c) for c in cells]
        if all(r is not None for r in reasons):
            dropped[column] = f"missing in every row ({_joined(r for r in reasons if r)})"
    return dropped


def same_by_definition(frame: pd.DataFrame, groups: pd.DataFrame) -> dict[str, str]:
    """Group-table columns whose figures are what they are by definition for these groups."""
    dropped: dict[str, str] = {}
    if groups.empty:
        return dropped
    scaling = METRIC["scaling_efficiency"].label
    per_device = METRIC["throughput_per_device_img_s"].label
    single = groups["devices"] == 1
    if scaling in frame and groups.loc[~single, "scaling_efficiency_median"].isna().all():
        dropped[scaling] = (
            "single-device runs only (1 by definition)"
            if single.all()
            else _joined(str(r) for r in groups["scaling_efficiency_reason"].dropna())
            or "no multi-device group with a 1-device reference"
        )
    if per_device in frame and single.all():
        dropped[per_device] = "single-device runs only (the same as throughput)"
    return dropped


def trim_table(
    frame: pd.DataFrame, groups: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """`frame` without the columns that hold nothing for these runs, and one line per reason.

    With `groups` (a group table), also the figures fixed by definition and the identity
    columns every row shares (named once in the report's introduction, see shared_identity)."""
    dropped = same_by_definition(frame, groups) if groups is not None else {}
    dropped |= {c: why for c, why in empty_columns(frame).items() if c not in dropped}
    lines = _lines(dropped)
    if groups is not None:
        dropped |= dict.fromkeys(shared_identity(frame), "")
    return frame.drop(columns=list(dropped)), lines


def shared_identity(frame: pd.DataFrame) -> dict[str, str]:
    """The identity columns of a group table with one value in every row: column -> value."""
    if frame.empty:
        return {}
    return {
        column: str(frame[column].iloc[0])
        for column in IDENTITY_COLUMNS
        if column in frame and frame[column].astype(str).nunique() == 1
    }


def identity_line(frame: pd.DataFrame) -> str | None:
    """One line naming what every group shares, so its columns are left out; None: nothing."""
    shared = shared_identity(frame)
    if not shared:
        return None
    words = []
    for column, value in shared.items():
        meaning = IDENTITY_MEANING.get((column, value)) or IDENTITY_MEANING.get((column, None))
        words.append(f"{IDENTITY_COLUMNS[column]} {value}" + (f" ({meaning})" if meaning else ""))
    return f"Every group: {', '.join(words)}. These columns are left out of the group tables."
