"""rnnsweep from Python: launch a sweep, or load a past one, as a table of trials.

The same command as ``python -m rnnsweep -m ...``, with the same validation and the same
records in MLflow; where the command would exit with a status, these raise:

- :class:`ConfigError` (exit status 2): the command is refused before anything starts;
- :class:`SweepFailed` (exit status 1): a trial failed or was killed; it carries the
  result (``.result.parent_run_id``, ``.result.trials``);
- ``KeyboardInterrupt`` (Ctrl-C): the sweep's runs are marked KILLED first.

Nothing outlives a call: the signal handlers, ``sys.argv``, Hydra's global state and the
embedded Ray session are as they were before it, so a notebook can run sweep after sweep.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

from hydra.core.global_hydra import GlobalHydra

from rnnsweep import cli, logs, privacy
from rnnsweep.config.errors import ConfigError
from rnnsweep.errors import Refused, RnnsweepError
from rnnsweep.sweep import interrupts
from rnnsweep.sweep.interrupts import Interrupted
from rnnsweep.version import versions

if TYPE_CHECKING:
    import pandas

__all__ = ["ConfigError", "SweepFailed", "SweepResult", "load", "sweep", "versions"]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # the config's default, from the working dir


class SweepResult(NamedTuple):
    parent_run_id: str
    trials: pandas.DataFrame  # one row per trial, as ``python -m rnnsweep.report --csv``


class SweepFailed(RnnsweepError, RuntimeError):
    """A trial failed or was killed (the CLI's exit status 1); ``result`` holds the
    sweep's records all the same."""

    def __init__(self, message: str, result: SweepResult) -> None:
        super().__init__(message)
        self.result = result


def sweep(overrides: list[str], *, config_dir: str | os.PathLike | None = None,
          config_name: str | None = None, check: bool = True) -> SweepResult:
    """Runs ``python -m rnnsweep -m *overrides`` (``--config-dir``/``--config-name`` when
    given) in this process and returns its parent run id and its trials.

    ``check=False`` returns the result even when a trial failed, instead of raising
    :class:`SweepFailed`.
    """
    args = ["-m", *[str(o) for o in overrides]]
    if config_dir is not None:
        args += ["--config-dir", os.fspath(config_dir)]
    if config_name is not None:
        args += ["--config-name", config_name]
    privacy.telemetry_off()
    logs.setup()  # before Ray, MLflow or matplotlib is imported, as the CLI does
    with _process_state_kept():
        interrupts.install()
        try:
            context = cli.execute(args)
        except Refused as exc:
            raise ConfigError(str(exc)) from None
        except Interrupted as exc:
            if exc.signum == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise
        except SystemExit as exc:
            # Hydra reports what raised inside the sweep (a sweeper, a callback) and exits.
            raise RuntimeError(f"the sweep ended with exit status {exc.code}") from None
        if context is None or context.parent is None:
            raise ConfigError("no sweep ran (a flag that shows things, such as --help)")
        result = SweepResult(context.parent, _table(context.tracker, context.parent))
    if check and context.exit_status:
        kept = " (some records wait in the journal: the store failed)" if (
            context.kept_records) else ""
        raise SweepFailed(f"{context.n_failed} trial(s) failed and {context.n_killed} were "
                          f"killed in sweep {context.parent}{kept}", result)
    return result


def load(parent_run_id: str, tracking_uri: str = DEFAULT_TRACKING_URI) -> SweepResult:
    """A past sweep, read back from MLflow alone: its parent run id and its trials (the
    runs it reused from earlier sweeps included, ``reused=True``). ``tracking_uri`` as on
    the command line (a relative SQLite path is taken from the working directory)."""
    privacy.telemetry_off()
    # Imported on first use: MLflow takes seconds that `import rnnsweep` skips.
    from rnnsweep.report.reading import ReportError, locate

    try:
        tracker, parent = locate(tracking_uri, parent_run_id, None)
    except ReportError as exc:
        raise ConfigError(str(exc)) from None
    return SweepResult(parent, _table(tracker, parent))


def _table(tracker, parent_run_id: str) -> pandas.DataFrame:
    # Imported on first use: pandas and MLflow take seconds that `import rnnsweep` skips.
    import pandas as pd

    from rnnsweep.report import tidy
    from rnnsweep.report.reading import sweep_trials

    trials = sweep_trials(tracker, tracker.client.get_run(parent_run_id))
    rows = tidy.rows(trials)
    return pd.DataFrame(rows, columns=tidy.columns(rows))


@contextmanager
def _process_state_kept():
    """What the CLI changes for its one command, put back: the signal handlers (its own
    and Ray's), ``sys.argv`` (Hydra reads it), Hydra's global state, and a signal that
    ended the sweep; the embedded Ray is shut down by the sweep's own close."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    argv = list(sys.argv)
    try:
        yield
    finally:
        sys.argv[:] = argv
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
        GlobalHydra.instance().clear()
        interrupts.forget()
