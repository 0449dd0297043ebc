"""Every use rnnsweep makes of Hydra's private API (``hydra._internal``, underscored
names), each where no public API does the same.

- The command line: rnnsweep parses Hydra's own flags with Hydra's own parser (intermixed,
  so overrides may come before and after flags), then hands the parsed arguments to
  Hydra as ``@hydra.main`` does; ``@hydra.main`` itself parses ``sys.argv`` with plain
  ``parse_args`` and takes no parser.
- Validation initialises Hydra on the command's own search path (``--config-dir``
  included, which ``hydra.initialize*`` cannot express) and expands a sweep the way
  Hydra's basic sweeper does.
- The composer applies a job's value overrides to a shared composition with Hydra's own
  override logic, and names the job's override dirname as Hydra does.
- rnnsweep's sweeper (the launcher shim's) is Hydra's basic sweeper less its composition
  of every job before launching: it extends ``BasicSweeper``, which only
  ``hydra._internal`` holds.
- The launcher reads a job's return value without raising (and printing) the error of a
  failed job, as ``JobReturn.return_value`` does.

Tested, access by access, in ``tests/test_adapters.py``.
"""

from __future__ import annotations

import argparse
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra._internal.core_plugins import basic_sweeper
from hydra._internal.hydra import Hydra
from hydra._internal.utils import (
    _run_hydra,
    create_automatic_config_search_path,
    detect_task_name,
    get_args_parser,
)
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn
from hydra.main import _get_rerun_conf
from hydra.types import TaskFunction
from omegaconf import DictConfig

# The module of Hydra's basic sweeper, whose ``BasicSweeper`` and ``BasicSweeperConf`` the
# shim's sweeper extends. The module, not its classes: Hydra's plugin scan executes its core
# plugins' modules again, and ``BasicSweeper`` names the class of the latest run in its own
# ``super(BasicSweeper, self)``; a subclass of an earlier one cannot be built.
__all__ = ["apply_overrides", "args_parser", "basic_sweeper", "job_value", "overrides_dirname",
           "rerun_config", "run", "search_path", "split_sweep", "start", "task_name"]


def args_parser(helps: dict[str, str]) -> argparse.ArgumentParser:
    """Hydra's own command-line parser, with the help of the options in ``helps``
    replaced (argparse lists a parser's options only in its private ``_actions``)."""
    parser = get_args_parser()
    for action in parser._actions:
        for option in action.option_strings:
            if option in helps:
                action.help = helps[option]
    return parser


def search_path(config_path: str, task_module: str) -> ConfigSearchPath:
    """The search path Hydra builds for a task function in ``task_module`` whose primary
    config directory is ``config_path``."""
    return create_automatic_config_search_path(None, task_module, config_path)


def task_name(task_module: str) -> str:
    """The job name Hydra gives a task function in ``task_module``."""
    return detect_task_name(None, task_module)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser,
        task_function: TaskFunction, config_path: str, config_name: str) -> None:
    """Runs parsed command-line ``args`` exactly as ``@hydra.main`` runs its own."""
    _run_hydra(args=args, args_parser=parser, task_function=task_function,
               config_path=config_path, config_name=config_name)


def rerun_config(path: str, overrides: list[str]) -> DictConfig:
    """The config of ``--experimental-rerun``, as ``@hydra.main`` loads it."""
    return _get_rerun_conf(path, overrides)


def start(task_name: str, search_path: ConfigSearchPath) -> None:
    """Initialises Hydra (``GlobalHydra``) on ``search_path``, as its command line does,
    so that ``hydra.compose`` composes from it."""
    Hydra.create_main_hydra2(task_name=task_name, config_search_path=search_path)


def split_sweep(overrides: list[Override]) -> list[list[str]]:
    """Every job's overrides, expanded from sweep ``overrides`` as Hydra's basic sweeper
    expands them (in one batch)."""
    return basic_sweeper.BasicSweeper.split_arguments(overrides, None)[0]


def apply_overrides(overrides: list[Override], config: DictConfig) -> None:
    """Applies value ``overrides`` to a composed ``config`` in place, as Hydra's
    composition applies them."""
    ConfigLoaderImpl._apply_overrides_to_config(overrides, config)


def overrides_dirname(overrides: list[Override], kv_sep: str, item_sep: str,
                      exclude_keys: list[str]) -> str:
    """``hydra.job.override_dirname`` of a job with ``overrides``, as Hydra names it."""
    return get_overrides_dirname(overrides=overrides, kv_sep=kv_sep, item_sep=item_sep,
                                 exclude_keys=exclude_keys)


def job_value(ret: JobReturn) -> Any:
    """What a job returned or, for a failed job, the exception it raised; the public
    ``return_value`` raises that exception instead (after writing to stderr)."""
    return ret._return_value
