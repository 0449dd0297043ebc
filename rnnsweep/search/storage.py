"""Where a study lives: in memory (the default), an RDB URL (``sqlite:///optuna.db``,
``postgresql://host/db``) or Optuna's journal file (any other value: a file path). A
persistent study resumes where a dead driver left it, and ``optuna-dashboard <storage>``
shows it live."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from rnnsweep.errors import Refused
from rnnsweep.redaction import redact

if TYPE_CHECKING:
    import optuna

# Optuna user attributes rnnsweep sets on each trial it asks for.
DRIVER_ATTR = "rnnsweep.driver"  # host:pid of the driver that asked for it
RUN_ATTR = "rnnsweep.run_id"  # its MLflow child run
SWEEP_ATTR = "rnnsweep.sweep"  # its sweep's MLflow parent run
OVERRIDES_ATTR = "rnnsweep.overrides"  # the trial's overrides, a list
DUPLICATE_ATTR = "rnnsweep.duplicate_of"  # the trial number whose outcome it was told
LOST_ATTR = "rnnsweep.lost"  # why it was marked FAIL: its driver died


class StorageError(Refused):
    """A storage that cannot be opened; one line, its credentials hidden."""


def is_url(spec: str) -> bool:
    return "://" in spec


def open_storage(spec: str | None) -> optuna.storages.BaseStorage | None:
    """The storage ``hydra.sweeper.storage`` names (None: in memory). A journal file's
    folder must exist; an RDB is created if it does not (as Optuna does)."""
    if not spec:
        return None
    import optuna
    from optuna.storages.journal import JournalFileBackend

    try:
        if is_url(spec):
            return optuna.storages.RDBStorage(spec)
        path = Path(spec).expanduser()
        if not path.parent.is_dir():
            raise FileNotFoundError(f"no such folder: {path.parent}")
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy, drivers and the OS raise their own
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StorageError(f"hydra.sweeper.storage={redact(spec)}: cannot be opened: "
                           f"{redact(first)[:300]}; allowed: an RDB URL (sqlite:///optuna.db, "
                           "postgresql://host/db) or a journal file path in an existing "
                           "folder") from None


def driver_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_orphans(study: optuna.Study) -> list[int]:
    """Trials a dead driver left RUNNING, marked FAIL: those asked for by a process of
    this host that no longer exists. A live driver's trials (another sweep on the same
    study) and other hosts' are left alone: from here nobody can tell whether those died.
    Returns their numbers."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner, _, pid = str(trial.user_attrs.get(DRIVER_ATTR, "")).rpartition(":")
        if owner == host and pid.isdigit() and not _alive(int(pid)):
            study._storage.set_trial_user_attr(  # the storage API: the trial is not ours
                trial._trial_id, LOST_ATTR, f"its driver {owner}:{pid} died")
            study.tell(trial.number, state=TrialState.FAIL)
            failed.append(trial.number)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process we may not signal: it may be ours, leave it
        return True
    return True
