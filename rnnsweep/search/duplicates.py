"""Duplicate proposals, one policy: an identical trial is never run twice.

- A proposal identical (same overrides) to a trial the study has finished COMPLETE or
  PRUNED, in this sweep or an earlier one on the same storage, is told that trial's
  outcome (its values; or its intermediate values and PRUNED) without running.
- Identical proposals asked together in one batch run once; the others are told its
  outcome when it ends.
- A proposal identical to a FAILED trial runs again (a failure may be the machine's).

Each one told without running carries the user attribute ``rnnsweep.duplicate_of`` (the
trial number it copies); the sweep's parent run has one tag
``rnnsweep.optuna.duplicate.<trial number>`` per such trial and the metric
``optuna_duplicates`` counting exactly those tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rnnsweep.search.storage import DUPLICATE_ATTR, OVERRIDES_ATTR

if TYPE_CHECKING:
    import optuna


def key(overrides: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(overrides))


@dataclass
class Batch:
    run: list[tuple[optuna.trial.Trial, tuple[str, ...]]] = field(default_factory=list)
    # trial told without running -> the finished trial it copies
    from_study: list[tuple[optuna.trial.Trial, optuna.trial.FrozenTrial]] = \
        field(default_factory=list)
    # trial told without running -> the trial of this batch that runs for it
    in_batch: list[tuple[optuna.trial.Trial, optuna.trial.Trial]] = field(default_factory=list)


def finished_trials(study: optuna.Study) -> dict[tuple[str, ...], optuna.trial.FrozenTrial]:
    """The study's finished trials that answer a duplicate, by their overrides."""
    from optuna.trial import TrialState

    found: dict[tuple[str, ...], optuna.trial.FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False,
                                  states=(TrialState.COMPLETE, TrialState.PRUNED)):
        overrides = trial.user_attrs.get(OVERRIDES_ATTR)
        if overrides is not None and trial.user_attrs.get(DUPLICATE_ATTR) is None:
            found.setdefault(key(overrides), trial)
    return found


def split(asked: Sequence[tuple[optuna.trial.Trial, tuple[str, ...]]],
          finished: dict[tuple[str, ...], optuna.trial.FrozenTrial]) -> Batch:
    batch = Batch()
    first: dict[tuple[str, ...], optuna.trial.Trial] = {}
    for trial, overrides in asked:
        k = key(overrides)
        if k in finished:
            batch.from_study.append((trial, finished[k]))
        elif k in first:
            batch.in_batch.append((trial, first[k]))
        else:
            first[k] = trial
            batch.run.append((trial, overrides))
    return batch
