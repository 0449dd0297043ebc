"""``python -m rnnsweep``: check the command line, start Ray, then hand over to Hydra."""

from __future__ import annotations

import os
import sys
import threading
from typing import NoReturn

from omegaconf import DictConfig, OmegaConf

from hydra_plugins.rnnsweep_launcher.rnnsweep_launcher import RnnsweepRayLauncherConf
from rnnsweep import config
from rnnsweep.config import command as cli_command
from rnnsweep.config import sweeps
from rnnsweep.config.validation import CheckedCommand, ConfigError, check_overrides
from rnnsweep.sweep.job import trial_name
from rnnsweep.sweep.resources import (
    LOCAL_ONLY_RAY_ENV,
    USAGE_STATS_RAY_ENV,
    InfeasibleRequest,
    check_feasible,
    cluster_address,
    concurrent_trials,
    plan,
)


def main() -> None:
    config.register()
    sweeps.register()
    try:
        command = cli_command.parse(sys.argv[1:])
    except cli_command.CommandError as exc:
        _refuse(exc)
    ray_started = False
    if command.runs_trials:
        multirun = command.multirun
        try:
            checked = check_overrides(command.overrides, multirun, command)
        except ConfigError as exc:
            _refuse(exc)
        address = cluster_address(checked.base)
        keep_ray_local(address)
        if multirun and _uses_ray_launcher(checked.base):
            start_ray(checked, address)
            ray_started = True
    # Imported only now: torch and MLflow cost seconds that a refused command should not pay.
    from rnnsweep.sweep import summary as sweep_summary
    from rnnsweep.sweep.job import task

    inherited_parent = os.environ.get("RNNSWEEP_PARENT_RUN_ID")
    try:
        cli_command.run(command, task)
    finally:
        if command.runs_trials:
            _close_abandoned_parent(checked.base, inherited_parent)
        if ray_started:
            from rnnsweep.sweep import cluster as ray_session

            ray_session.stop()
    if sweep_summary.last_failed:
        sys.exit(1)


def start_ray(checked: CheckedCommand, address: str | None) -> None:
    """Starts (or connects to) the sweep's Ray before Hydra runs, so that Ray's start-up
    and the workers' imports overlap the driver's own; the launcher then finds it
    connected. An unreachable cluster, or a trial no node can hold, is refused here,
    before anything is recorded."""
    from rnnsweep.sweep import cluster as ray_session

    if address:
        try:
            ray_session.check_reachable(address)
        except ray_session.LaunchError as exc:
            _refuse(exc)
    # Ray's start-up mostly waits on the processes it spawns, leaving a core idle; the
    # store's first use (MLflow's import, creating the tables) fills it. It is always
    # joined, even on a refusal, so the tables are never left half made.
    store = threading.Thread(target=_open_store, args=(checked.base.tracking,),
                             name="open-store")
    store.start()
    try:
        ray_session.start_for_cli(address, checked.base.hydra.launcher)
        nodes = ray_session.nodes()
        requests = {i: plan(t, nodes) for i, t in enumerate(checked.trials)}
        check_feasible(requests, nodes,
                       {i: trial_name(o) for i, o in enumerate(checked.overrides)})
    except (ray_session.LaunchError, InfeasibleRequest) as exc:
        store.join()
        _refuse(exc)
    store.join()
    if address is None:
        # A named cluster's workers are shared with others; only warm our own, and only
        # as many as will run trials at once (each warm-up costs seconds of CPU).
        ray_session.prewarm(concurrent_trials(list(requests.values()), nodes))


def _close_abandoned_parent(base: DictConfig, inherited: str | None) -> None:
    """A sweeper that raises (Optuna with no completed trial, a bad storage) never reaches
    Hydra's end-of-sweep callbacks, which would have closed the sweep's parent run."""
    from rnnsweep.tracking import current_parent_run

    parent = current_parent_run()
    if not parent or parent == inherited:
        return
    from rnnsweep.tracking import Tracker

    tracker = Tracker(base.tracking.uri, base.tracking.experiment)
    # An interrupted sweep has already closed its parent KILLED; that status stays.
    if tracker.client.get_run(parent).info.status == "RUNNING":
        tracker.fail_run(parent, "the sweep ended early: the sweeper or a callback raised "
                                 "(see its output)")


def _open_store(tracking: DictConfig) -> None:
    try:
        from rnnsweep.tracking import Tracker

        Tracker(tracking.uri, tracking.experiment)
    except Exception:  # noqa: BLE001 - the sweep opens the store again and reports it there
        pass


def keep_ray_local(address: str | None) -> None:
    """Keeps an embedded or loopback Ray on 127.0.0.1, and every Ray it starts from
    reporting usage statistics off the machine.

    ``ray.init`` rewrites a 127.0.0.1 node address to the machine's outward one, so its
    servers would listen beyond loopback. Ray's local-only mode (the one it uses on macOS)
    keeps them on loopback; Ray reads the switch when it is imported, hence here, before
    any Ray import. A named remote cluster is left alone. Both are defaults the user's
    own environment can override.
    """
    os.environ.setdefault(USAGE_STATS_RAY_ENV, "0")
    host = (address or "127.0.0.1").removeprefix("ray://").rpartition(":")[0] or "127.0.0.1"
    if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        os.environ.setdefault(LOCAL_ONLY_RAY_ENV, "0")


def _uses_ray_launcher(base: DictConfig) -> bool:
    target = OmegaConf.select(base, "hydra.launcher._target_", default="")
    return target == RnnsweepRayLauncherConf._target_


def _refuse(exc: Exception) -> NoReturn:
    print(f"rnnsweep: error: {exc}", file=sys.stderr)
    sys.exit(2)
