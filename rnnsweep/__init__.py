"""rnnsweep: sweep, measure and record recurrent networks with Hydra, Ray and MLflow.

From Python (see :mod:`rnnsweep.api`)::

    import rnnsweep
    parent_run_id, trials = rnnsweep.sweep(["batch=1,8,32,128"])   # trials: a DataFrame
    parent_run_id, trials = rnnsweep.load(parent_run_id)

``import rnnsweep`` stays cheap: Hydra, Ray, MLflow, torch and pandas load on first use.
It changes nothing in the process either: the environment defaults and signal handlers
are installed by the entry points that run something (``rnnsweep.entry``, the API's
calls, ``python -m rnnsweep.report``, ``rnnsweep.compare``, the launcher plugin).
"""

import types

from rnnsweep import sweep as _sweep_package  # the subpackage: a docstring, free to import
from rnnsweep.version import __version__ as __version__

__all__ = ["ConfigError", "SweepFailed", "SweepResult", "load", "sweep", "versions"]


class _CallableSweepPackage(types.ModuleType):
    """``rnnsweep.sweep`` names the subpackage that runs sweeps, and importing any of its
    modules sets that attribute to the subpackage, so a function of that name would not
    stay: called, the subpackage is the API's :func:`rnnsweep.api.sweep`."""

    def __call__(self, *args, **kwargs):
        from rnnsweep.api import sweep

        return sweep(*args, **kwargs)


_sweep_package.__class__ = _CallableSweepPackage


def __getattr__(name: str):
    """The API's names, imported when first asked for (PEP 562)."""
    if name in __all__:
        from rnnsweep import api

        return getattr(api, name)
    raise AttributeError(f"module 'rnnsweep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
