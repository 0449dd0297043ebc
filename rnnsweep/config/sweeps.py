"""Ready sweeps from ``sweeps/`` become the ``sweep`` config group (``+sweep=<name>``).

Each file is a ``# @package _global_`` config: it overrides groups and sets
``hydra.sweeper.params``. They live outside ``conf/`` by design, so they are registered
in the ConfigStore rather than found on the search path.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from rnnsweep.config import sweeps_dir


def register() -> list[str]:
    store = ConfigStore.instance()
    names = []
    for path in sorted(sweeps_dir().glob("*.yaml")):
        store.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")
        names.append(path.stem)
    return names
