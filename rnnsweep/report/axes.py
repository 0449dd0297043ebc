"""Which params a sweep varied (its axes), and trials grouped and labelled along them."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import groupby

from rnnsweep.record import NON_IDENTITY_PREFIXES
from rnnsweep.report.model import Trial

# Axes people sweep most, in the order their columns read best; others follow by name.
AXIS_ORDER = ("model.cell", "model.impl", "precision.name", "clipping.max_norm", "batch",
              "seq_len", "model.hidden_size", "model.num_layers", "task.name")


def sweep_axes(trials: list[Trial]) -> list[str]:
    """The params that differ across trials, one per independent axis.

    One choice on the command line can set several params (``precision=bf16`` sets
    ``precision.name`` and ``precision.autocast_dtype``). A param whose values are fixed by
    another axis of its own config group, or that splits the trials exactly like another
    axis, is the same axis and is left out; ``*.name`` and ``model.cell`` are kept.
    """
    with_params = [t for t in trials if t.params]
    keys = sorted({k for t in with_params for k in t.params
                   if not k.startswith(NON_IDENTITY_PREFIXES)}, key=axis_rank)
    varying = [k for k in keys if len({t.params.get(k) for t in with_params}) > 1]
    axes: list[str] = []
    for key in sorted(varying, key=lambda k: (not _is_name(k), axis_rank(k))):
        same_axis = any(_determines(a, key, with_params)
                        and (_group(a) == _group(key) or _determines(key, a, with_params))
                        for a in axes)
        if not same_axis:
            axes.append(key)
    return sorted(axes, key=axis_rank)


def groups(trials: Iterable[Trial], axes: list[str], axis: str,
           metric: str) -> list[tuple[str, list[Trial]]]:
    """OK trials with ``metric``, grouped by the other axes' values, each group sorted along
    ``axis``; groups with fewer than two points on ``axis`` tell nothing and are dropped.
    Axes that do not vary among these trials (e.g. one whose other values all failed) do
    not split or name the groups."""
    kept = ok(trials, metric)
    others = [a for a in axes if a != axis and len({t.params.get(a) for t in kept}) > 1]
    kept.sort(key=lambda t: values(t, others))
    found = []
    for _, members in groupby(kept, key=lambda t: values(t, others)):
        group = sorted(members, key=lambda t: sort_key(t.params[axis]))
        if len({t.params[axis] for t in group}) > 1:
            found.append((label(group[0], others), group))
    return found


def ok(trials: Iterable[Trial], *metrics: str) -> list[Trial]:
    return [t for t in trials if t.ok and all(m in t.metrics for m in metrics)]


def values(trial: Trial, keys: list[str]) -> list:
    return [sort_key(trial.params.get(k)) for k in keys]


def label(trial: Trial, keys: list[str], short: bool = False) -> str:
    parts = [(k.rsplit(".", 1)[-1] if short else k, trial.params.get(k, "?")) for k in keys]
    return ", ".join(f"{k}={v}" for k, v in parts)


def cell_label(trial: Trial, others: list[str]) -> str:
    """A fused-vs-loop bar is named by its cell first, then any other axis."""
    rest = label(trial, others)
    return trial.params.get("model.cell", "?") + (f"\n{rest}" if rest else "")


def suffix(text: str) -> str:
    return f" ({text})" if text else ""


def sort_key(value: str | None) -> tuple:
    """Numbers sort as numbers; ``None`` (e.g. clipping off) before them; text after."""
    if value is None or value == "None":
        return (0, 0.0, "")
    try:
        return (1, float(value), "")
    except ValueError:
        return (2, 0.0, value)


def axis_rank(key: str) -> tuple[int, str]:
    return (AXIS_ORDER.index(key) if key in AXIS_ORDER else len(AXIS_ORDER), key)


def _is_name(key: str) -> bool:
    return key.endswith(".name") or key == "model.cell"


def _group(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def _determines(a: str, b: str, trials: list[Trial]) -> bool:
    """Whether knowing param ``a`` fixes param ``b`` in every trial."""
    seen: dict[str | None, str | None] = {}
    return all(seen.setdefault(t.params.get(a), t.params.get(b)) == t.params.get(b)
               for t in trials)
