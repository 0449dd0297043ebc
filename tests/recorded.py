"""Sweeps recorded without the launcher: ``run_trial`` for each config, written through the
real ``Tracker`` under a parent run, as the launcher and callbacks record them. For tests
whose subject is what is read back (the report, compare), not the launcher."""

from __future__ import annotations

from conftest import TOY, compose_cfg

from rnnsweep.tracking import ROLE_TAG, Tracker
from rnnsweep.trial.run import run_trial


def record_sweep(tracker: Tracker, trials: list[list[str]], name: str = "sweep",
                 parent_tags: dict[str, str] | None = None) -> str:
    """Runs each override list at toy sizes as one child of a new parent; the parent's id."""
    (parent,) = record_sweeps(tracker, trials, [name], parent_tags)
    return parent


def record_sweeps(tracker: Tracker, trials: list[list[str]], names: list[str],
                  parent_tags: dict[str, str] | None = None) -> list[str]:
    """The same trials recorded as one sweep per name, run side by side: each trial once
    for every sweep in turn (A1 B1 A2 B2 ...). Sweeps whose timings are compared are
    measured so: this machine's speed drifts within a minute (B read 1.6x slower than A,
    trial for trial, when A ran whole before B). The parents' ids, in ``names`` order."""
    parents = [tracker.start_run(name, tags={ROLE_TAG: "sweep", **(parent_tags or {})})
               for name in names]
    for overrides in trials:
        for parent in parents:
            record = run_trial(compose_cfg([*TOY, *overrides]))
            run_id = tracker.start_run(" ".join(overrides) or "default", parent_run_id=parent)
            tracker.write_record(run_id, record)
    for parent in parents:
        tracker.client.set_terminated(parent, "FINISHED")
    return parents
