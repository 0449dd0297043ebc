"""One error base class, from which every entry point's exit status follows."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from rnnsweep.errors import Refused, RnnsweepError

PACKAGE = Path(__file__).resolve().parents[1] / "rnnsweep"
# Exceptions that never end a command: a trial's own outcomes (caught and recorded on its
# run), and a store failure the journal catches.
NOT_COMMAND_ERRORS = {
    "rnnsweep.trial.run.Unsupported", "rnnsweep.deploy.export.ParityError",
    "rnnsweep.deploy.streaming.ExportedModelError", "rnnsweep.tracking.StoreLost",
    "rnnsweep.journal.StoreDown",
}


def _driver_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] in ("__main__",):
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_error_a_command_can_end_with_comes_from_the_base():
    strays = []
    for name in _driver_modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            where = f"{cls.__module__}.{cls.__qualname__}"
            if (cls.__module__ == name and issubclass(cls, Exception)
                    and not issubclass(cls, RnnsweepError) and where not in NOT_COMMAND_ERRORS):
                strays.append(where)
    assert not strays, f"errors outside rnnsweep.errors.RnnsweepError: {strays}"


@pytest.mark.parametrize("name", [
    "rnnsweep.config.errors.ConfigError", "rnnsweep.config.command.CommandError",
    "rnnsweep.redaction.CredentialsInOverride", "rnnsweep.report.reading.ReportError",
    "rnnsweep.search.storage.StorageError", "rnnsweep.search.space.SpaceError",
    "rnnsweep.sweep.resources.InfeasibleRequest", "rnnsweep.sweep.cluster.LaunchError",
    "rnnsweep.sweep.shipping.ShippingError"])
def test_refusals_exit_with_status_2(name):
    module, _, attr = name.rpartition(".")
    cls = getattr(importlib.import_module(module), attr)
    assert issubclass(cls, Refused) and cls.exit_status == 2


def test_a_failed_sweep_exits_with_status_1():
    from rnnsweep.api import SweepFailed

    assert issubclass(SweepFailed, RnnsweepError) and SweepFailed.exit_status == 1
