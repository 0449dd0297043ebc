"""One row per trial, for users' own analysis (pandas, R, a spreadsheet): the run's
identity and outcome, its params with their types restored, and its summary metrics."""

from __future__ import annotations

import csv
from pathlib import Path

from rnnsweep.report.model import Trial

# Per-step series: their last value is not a summary of the trial.
SERIES = ("loss", "grad_norm", "grad_norm_clipped", "saturation", "grad_scale")
FIXED = ("run_id", "outcome", "reason", "reused", "noisy", "noise_reason", "device")


def rows(trials: list[Trial]) -> list[dict[str, object]]:
    out = []
    for t in trials:
        row: dict[str, object] = {
            "run_id": t.run_id, "outcome": t.outcome, "reason": t.reason, "reused": t.reused,
            "noisy": t.noisy, "noise_reason": t.noise_reason, "device": t.device}
        row |= {k: typed(v) for k, v in sorted(t.params.items())}
        row |= {k: v for k, v in sorted(t.metrics.items()) if _summary(k)}
        out.append(row)
    return out


def columns(table: list[dict[str, object]]) -> list[str]:
    """The fixed columns, then params, then metrics, each in first-seen order."""
    seen: dict[str, None] = dict.fromkeys(FIXED)
    for row in table:
        seen |= dict.fromkeys(row)
    return list(seen)


def write(trials: list[Trial], path: Path) -> int:
    """CSV, or Parquet for a ``.parquet`` path (needs pandas and pyarrow). Returns the row count."""
    table = rows(trials)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pandas as pd  # only here: optional for a CSV export

        pd.DataFrame(table, columns=columns(table)).to_parquet(path, index=False)
        return len(table)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns(table), restval="")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in table)
    return len(table)


def typed(value: str) -> object:
    """MLflow stores params as strings; give numbers, booleans and None back their types."""
    if value == "None":
        return None
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _summary(metric: str) -> bool:
    return metric not in SERIES and "/" not in metric
