"""The command behind ``python -m rnnsweep`` and the ``rnnsweep`` script: check the command
line, start Ray, then hand over to Hydra inside the sweep's context, which always closes
what the sweep opened. The process's signal handlers and environment defaults are the
entry point's (:mod:`rnnsweep.entry`), installed before this module's imports."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import NoReturn

from rnnsweep import config, privacy, redaction
from rnnsweep.config import command as cli_command
from rnnsweep.config import sweeps
from rnnsweep.config.errors import ConfigError
from rnnsweep.errors import Refused
from rnnsweep.preflight.checks import check_command, uses_ray_launcher
from rnnsweep.preflight.validation import CheckedCommand
from rnnsweep.sweep import interrupts
from rnnsweep.sweep.job import SweepTask
from rnnsweep.sweep.naming import trial_names
from rnnsweep.sweep.resources import (
    LOCAL_ONLY_RAY_ENV,
    InfeasibleRequest,
    check_feasible,
    cluster_address,
    concurrent_trials,
    plan,
)
from rnnsweep.version import versions


def run(args: list[str]) -> int:
    context = execute(args)
    return 0 if context is None else context.exit_status


def execute(args: list[str]):
    """Runs the command line ``args``; the sweep's closed context, or None where the
    command runs no trials (``--help``, ``--version``, ...). Raises :class:`Refused`."""
    if "--version" in args:
        print(" ".join(f"{name} {version}" for name, version in versions().items()))
        return None
    config.register()
    sweeps.register()
    # Before Hydra parses anything: it writes the overrides into multirun.yaml and .hydra/.
    try:
        sys.argv[1:] = args = redaction.hide_in_overrides(args)
    except redaction.CredentialsInOverride as exc:
        _refuse(exc)
    try:
        command = cli_command.parse(args)
    except cli_command.CommandError as exc:
        _refuse(exc)
    if not command.runs_trials:  # --help, --cfg, --info, --shell-completion: no trials
        cli_command.run(command, SweepTask())
        return None
    multirun, overrides = command.multirun, command.overrides
    try:
        checked = check_command(command, on_size=_show_size)
    except ConfigError as exc:
        _refuse(exc)
    address = cluster_address(checked.base)
    keep_ray_local(address)
    # Imported only now: MLflow costs seconds that a refused command should not pay.
    from rnnsweep.sweep.context import SweepContext

    with SweepContext.for_sweep(checked.base, overrides, multirun) as context:
        if multirun and uses_ray_launcher(checked.base):
            start_ray(checked, address, context)
        context.open()
        # Hydra runs the command as parsed above, as @hydra.main would have.
        cli_command.run(command, SweepTask(context))
    return context


def start_ray(checked: CheckedCommand, address: str | None, context) -> None:
    """Starts (or connects to) the sweep's Ray before Hydra runs, so that Ray's start-up
    and the workers' imports overlap the driver's own; the launcher then finds it
    connected. An unreachable cluster, or a trial no node can hold, is refused here,
    before anything is recorded."""
    # Imported only now: Ray reads keep_ray_local's switches when it is imported.
    from rnnsweep.sweep import cluster as ray_session

    # Ray's start-up mostly waits on the processes it spawns, leaving a core idle; MLflow's
    # import (seconds) fills it. The store itself is opened only once the command is
    # accepted: a refused command creates and records nothing.
    store = threading.Thread(target=_import_tracking, name="import-mlflow", daemon=True)
    store.start()
    try:
        try:
            ray_session.connect(address, checked.base.hydra.launcher, checked.base)
        except SystemExit as exc:
            # ray.init puts in a SIGTERM handler of its own (sys.exit(15)) while it starts:
            # a SIGTERM then still ends the command as one does, in one line.
            if exc.code == signal.SIGTERM:
                raise interrupts.Interrupted(signal.SIGTERM) from None
            raise
        context.own_ray(embedded=address is None)
        interrupts.install()  # over Ray's own SIGTERM handlers, Python's and C++'s
        nodes = ray_session.nodes()
        requests = {i: plan(t, nodes) for i, t in enumerate(checked.trials)}
        check_feasible(requests, nodes, dict(enumerate(trial_names(checked.overrides))))
    except (ray_session.LaunchError, InfeasibleRequest) as exc:
        store.join(IMPORT_WAIT_S)
        _refuse(exc)
    store.join(IMPORT_WAIT_S)
    if address is None:
        # A named cluster's workers are shared with others; only warm our own, and only
        # as many as will run trials at once (each warm-up costs seconds of CPU).
        ray_session.prewarm(concurrent_trials(list(requests.values()), nodes))


# How long the driver waits for MLflow's head-start import. A signal that lands inside an
# import on the main thread (Ray's start imports too) can leave a module lock that this
# thread then waits on for ever; past this, the driver imports MLflow itself.
IMPORT_WAIT_S = 60.0


def _import_tracking() -> None:
    # Only a head start: a signal that ends the command mid-import (the interpreter then
    # refuses the import's own atexit hooks) must not print a traceback, and any real
    # failure is met again, and reported, by the import that needs it.
    with contextlib.suppress(Exception):
        import rnnsweep.tracking  # noqa: F401


def keep_ray_local(address: str | None) -> None:
    """Keeps an embedded or loopback Ray on 127.0.0.1, and every Ray it starts from
    reporting usage statistics off the machine.

    ``ray.init`` rewrites a 127.0.0.1 node address to the machine's outward one, so its
    servers would listen beyond loopback. Ray's local-only mode (the one it uses on macOS)
    keeps them on loopback; Ray reads the switch when it is imported, hence here, before
    any Ray import. A named remote cluster is left alone. Both are defaults the user's
    own environment can override.
    """
    privacy.telemetry_off()
    host = (address or "127.0.0.1").removeprefix("ray://").rpartition(":")[0] or "127.0.0.1"
    if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        os.environ.setdefault(LOCAL_ONLY_RAY_ENV, "0")


# From this many trials on, the sweep's size is shown before they are checked (about
# 5 ms each: 1,000 take seconds, and a terminal should not sit silent that long).
SHOW_SIZE_FROM = 200


def _show_size(count: int) -> None:
    if count >= SHOW_SIZE_FROM:
        print(f"rnnsweep: {count:,} trials; checking each before anything starts",
              file=sys.stderr, flush=True)


def _refuse(exc: Exception) -> NoReturn:
    raise Refused(str(exc)) from None
