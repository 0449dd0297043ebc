"""Composes a sweep's jobs, sharing the work between jobs that differ only in values.

Hydra composes each job from scratch (search path, defaults list, every config file,
merges): about a tenth of a second, which dominated a thousand-trial sweep's cost on the
driver. Jobs whose overrides differ only in plain values (``seed=3``, ``batch=8``) share
one composition of everything else; each then gets its values applied by Hydra's own
override logic, and the job-specific ``hydra`` fields Hydra would have set. Any override
that can change the defaults list (a config group, a package, a deletion, ``hydra.*``)
is composed the usual way.

Such a job need not even be composed on the driver: its shared composition travels to
the workers once, and each job as its value overrides (:class:`Patch`), which the worker
applies (:func:`job_config`). The driver then neither copies nor pickles a config per job,
which was a quarter of its time in a thousand-trial sweep.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf, open_dict

from rnnsweep.adapters import hydra_private


@dataclass(frozen=True)
class Patch:
    """A job whose config is its shared composition (``key``) with ``values`` applied;
    ``parsed`` is every override of the job, for Hydra's record of them."""

    key: tuple[str, ...]
    values: list[Override]
    parsed: list[Override]


class Lines:
    """Override lines, each parsed and judged once: Hydra's grammar (ANTLR, in Python)
    takes about 0.2 ms a line, and judging a line plain looks in every config source;
    the trials of a sweep repeat nearly all their lines (a thousand seeds share every
    line but one), and were parsed three times each. Hydra parses each line on its own,
    so a line parses the same in any company."""

    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self._parser = OverridesParser.create()
        self._parsed: dict[str, Override] = {}
        self._plain: dict[str, bool] = {}

    def parse(self, lines: Sequence[str]) -> list[Override]:
        new = [line for line in dict.fromkeys(lines) if line not in self._parsed]
        self._parsed.update(zip(new, self._parser.parse_overrides(new), strict=True))
        return [self._parsed[line] for line in lines]

    def split(self, lines: Sequence[str]) -> tuple[tuple[str, ...], list[Override],
                                                   list[Override]]:
        """The composition the job shares (every line that can change the defaults list),
        the plain values applied on top of it, and every line parsed."""
        parsed = self.parse(lines)
        for line, override in zip(lines, parsed, strict=True):
            if line not in self._plain:
                self._plain[line] = is_plain_value(override, self.loader)
        plain = [self._plain[line] for line in lines]
        key = tuple(line for line, p in zip(lines, plain, strict=True) if not p)
        return key, [o for o, p in zip(parsed, plain, strict=True) if p], parsed


class Composer:
    def __init__(self, config_loader: ConfigLoader, master: DictConfig) -> None:
        self.loader, self.master = config_loader, master
        self.lines = Lines(config_loader)
        self._shared: dict[tuple[str, ...], DictConfig] = {}
        # Pickled: each job unpickles a copy of its own (half a pickle round trip).
        self._trial_only: dict[tuple[str, ...], bytes] = {}

    def compose(self, overrides: list[str], hydra: bool = True) -> DictConfig:
        """The job's config. ``hydra=False``: without its ``hydra`` node where it shares
        a composition (a copy three times cheaper, for reading the trial's own keys);
        a job composed from scratch always has it."""
        patch = self.patch(overrides)
        if patch is None:
            return self.loader.load_sweep_config(self.master, list(overrides))
        if hydra:
            return apply(self.base(patch.key), patch)
        config = pickle.loads(self._trial_base(patch.key))
        hydra_private.apply_overrides(patch.values, config)
        return config

    def patch(self, overrides: list[str]) -> Patch | None:
        """The job as a shared composition and its values; None for a job that must be
        composed from scratch (no plain values: nothing to share)."""
        key, values, parsed = self.lines.split(overrides)
        return Patch(key, values, parsed) if values else None

    def base(self, key: tuple[str, ...]) -> DictConfig:
        """The shared composition ``key``, with its ``hydra`` node and the master's
        resolver cache (``${now:}`` reads the same in every job), as every job of it
        starts."""
        if key not in self._shared:
            config = self.loader.load_sweep_config(self.master, list(key))
            OmegaConf.copy_cache(from_config=self.master, to_config=config)
            self._shared[key] = config
        return self._shared[key]

    def _trial_base(self, key: tuple[str, ...]) -> bytes:
        if key not in self._trial_only:
            trial = hydra_private.fresh_copy(self.base(key))
            with open_dict(trial):
                del trial["hydra"]
            self._trial_only[key] = hydra_private.pickled(trial)
        return self._trial_only[key]


def apply(base: DictConfig, patch: Patch) -> DictConfig:
    """A job's config from its shared composition: a copy with its values applied by
    Hydra's own override logic and the job's own fields as Hydra's composition sets them.
    Runs on the driver or, given the composition once, on a worker."""
    return patched(hydra_private.fresh_copy(base), patch)


def patched(config: DictConfig, patch: Patch) -> DictConfig:
    """:func:`apply` onto a copy of the composition the caller made (a worker unpickles
    the copy it keeps pickled), changed in place."""
    hydra_private.apply_overrides(patch.values, config)
    task = [o for o in patch.parsed if not o.is_hydra_override()]
    with open_dict(config.hydra):
        config.hydra.overrides.task = [o.input_line for o in task]
        dirname = config.hydra.job.config.override_dirname
        config.hydra.job.override_dirname = hydra_private.overrides_dirname(
            task, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep,
            exclude_keys=dirname.exclude_keys)
    return config


def job_config(config: DictConfig, idx: int, hardware: dict[str, Any] | None) -> DictConfig:
    """The fields that make a composed config job ``idx`` of its sweep, and the
    ``hardware`` Ray granted it (the trial sizes its threads from it, and its params show
    what it was given)."""
    if "hydra" in config:
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
            # Resolved with the job's own values (``out/b${batch}``) and the master's
            # resolver cache, which the composition carries: ``${now:}`` and the driver's
            # pid read the same on every worker as on the driver.
            config.hydra.sweep.dir = str(config.hydra.sweep.dir)
    if hardware and OmegaConf.select(config, "hardware") is not None:
        with open_dict(config):
            for key, value in hardware.items():
                config.hardware[key] = value
    return config


def input_line(override: Override) -> str:
    """The text an override was parsed from (Hydra's type allows none)."""
    if override.input_line is None:  # only an override built in code lacks one
        raise ValueError(f"override {override.key_or_group} was not parsed from a line")
    return override.input_line


def is_plain_value(override: Override, loader: ConfigLoader) -> bool:
    """A ``key=value`` that cannot change the defaults list."""
    return (override.type == OverrideType.CHANGE and override.package is None
            and not override.is_sweep_override() and not override.is_hydra_override()
            and not is_group(loader, override.key_or_group.replace(".", "/")))


def is_group(loader: ConfigLoader, path: str) -> bool:
    """Whether ``path`` names a config group in any of ``loader``'s sources."""
    return any(source.is_group(path) for source in loader.get_sources())


def compose_trials(trials: Sequence[Sequence[str]], compose: Callable[[list[str]], DictConfig],
                   loader: ConfigLoader) -> Iterator[DictConfig]:
    """``compose(overrides)`` of every trial (configs without the ``hydra`` node, as
    Hydra's compose API returns them), one at a time, sharing one composition between
    trials that differ only in values. A value that does not apply is composed the usual
    way, so that its error is the one ``compose`` gives."""
    lines = Lines(loader)
    shared: dict[tuple[str, ...], bytes] = {}  # pickled, as Composer keeps them
    for trial in trials:
        key, values, _ = lines.split(trial)
        if key not in shared:
            shared[key] = hydra_private.pickled(compose(list(key)))
        config = pickle.loads(shared[key])
        try:
            hydra_private.apply_overrides(values, config)
        except Exception:  # noqa: BLE001 - composed again below, for Hydra's own message
            config = compose(list(trial))
        yield config
