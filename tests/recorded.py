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
    parent = tracker.start_run(name, tags={ROLE_TAG: "sweep", **(parent_tags or {})})
    for overrides in trials:
        record = run_trial(compose_cfg([*TOY, *overrides]))
        run_id = tracker.start_run(" ".join(overrides) or "default", parent_run_id=parent)
        tracker.write_record(run_id, record)
    tracker.client.set_terminated(parent, "FINISHED")
    return parent
