"""A trial's name: the overrides of the keys its sweep varies (``batch=8,model=gru``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from hydra.core.hydra_config import HydraConfig

from rnnsweep.record import NON_IDENTITY_PREFIXES


def trial_name(overrides: Sequence[str] | None = None,
               swept: Collection[str] | None = None) -> str:
    """A trial's name: its overrides of the keys ``swept`` across its sweep
    (``batch=8,model=gru``), or ``trial`` when none is.

    Without ``swept`` (a trial that cannot see its sweep's other trials, such as a job of
    Hydra's basic launcher) every override the user gave is kept except where results go
    (``tracking.*``, ``ray.*``). Called with no arguments inside a Hydra job, the job's
    own overrides are used.
    """
    if overrides is None:
        try:
            overrides = HydraConfig.get().overrides.task
        except ValueError:  # not inside a Hydra job (called from Python)
            return "trial"
    named = [o for o in overrides if _named(o, swept)]
    return ",".join(named) or "trial"


def trial_names(overrides_per_trial: Sequence[Sequence[str]]) -> list[str]:
    """Every trial of a sweep named by the keys that vary across it, and only those."""
    swept = swept_keys(overrides_per_trial)
    return [trial_name(overrides, swept) for overrides in overrides_per_trial]


def swept_keys(overrides_per_trial: Sequence[Sequence[str]]) -> set[str]:
    """The keys whose value differs between trials, or that some trials leave at the
    default; a key every trial sets alike is the sweep's setting, not a trial's name."""
    values: dict[str, set[str]] = {}
    for overrides in overrides_per_trial:
        for override in overrides:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    every = [{o.partition("=")[0] for o in overrides} for overrides in overrides_per_trial]
    return {key for key, seen in values.items()
            if len(seen) > 1 or any(key not in keys for keys in every)}


def _named(override: str, swept: Collection[str] | None) -> bool:
    key = override.partition("=")[0]
    if key.startswith("hydra.") or key in ("+sweep", "sweep"):
        return False
    if swept is not None:
        return key in swept
    return not key.startswith(NON_IDENTITY_PREFIXES)
