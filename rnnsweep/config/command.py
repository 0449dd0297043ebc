"""The command line, parsed by Hydra's own argument parser, and where its config comes from.

``python -m rnnsweep`` takes exactly Hydra's flags (``--config-dir``, ``--config-name``,
``--config-path``, ``--cfg``, ``--info``, ``--shell-completion``, ``--help``, ...). The
parsed arguments serve twice: validation composes every trial from the same search path
Hydra will use, and then the very same arguments are handed to Hydra to run.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from hydra import version
from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.types import TaskFunction

from rnnsweep.adapters import hydra_private
from rnnsweep.config.schema import conf_dir
from rnnsweep.errors import Refused

VERSION_BASE = "1.3"
# The module that holds the task function: Hydra names the job after it.
TASK_MODULE = "rnnsweep.sweep.job"
DEFAULT_CONFIG_NAME = "config"
SHELL_COMPLETION_COMMANDS = ("install", "uninstall", "query")


class CommandError(Refused):
    """A one-line, user-facing error about the command line itself."""


@dataclass(frozen=True)
class Command:
    args: argparse.Namespace
    parser: argparse.ArgumentParser

    @property
    def overrides(self) -> list[str]:
        return list(self.args.overrides)

    @property
    def multirun(self) -> bool:
        return bool(self.args.multirun)

    @property
    def runs_trials(self) -> bool:
        """False for the flags that show things (help, config, info, completion)."""
        a = self.args
        return not (a.help or a.hydra_help or a.cfg or a.info or a.shell_completion
                    or a.experimental_rerun)

    @property
    def config_name(self) -> str:
        return self.args.config_name or DEFAULT_CONFIG_NAME

    @property
    def config_path(self) -> str:
        """rnnsweep's own ``conf/`` unless ``--config-path`` replaces it."""
        return self.args.config_path or str(conf_dir())

    def search_path(self) -> ConfigSearchPath:
        """The search path exactly as Hydra builds it for this command line."""
        path = hydra_private.search_path(self.config_path, TASK_MODULE)
        if self.args.config_dir is not None:
            path.prepend(provider="command-line", path=f"file://{self.args.config_dir}",
                         anchor=SearchPathQuery(provider="schema"))
        return path

    @property
    def task_name(self) -> str:
        return hydra_private.task_name(TASK_MODULE)


def parse(argv: list[str]) -> Command:
    """Parses ``argv`` as Hydra would; paths the user gives are taken from the working
    directory (Hydra would take a relative ``--config-path`` from rnnsweep's own
    package, which no user means)."""
    parser = hydra_private.args_parser({"--config-path": (
        "Replaces rnnsweep's own conf/ as the primary config directory (absolute, "
        "relative to the working directory, or pkg://)")})
    parser.prog = "rnnsweep"
    # One line, not argparse's usage block; argparse's only hook for it is this method.
    parser.error = _refuse  # type: ignore[method-assign]
    # Intermixed: overrides may come before and after flags (``batch=1 -m seed=0,1``),
    # which plain parse_args, as in @hydra.main, refuses.
    args = parser.parse_intermixed_args(argv)
    if args.config_dir is not None:
        args.config_dir = os.path.abspath(args.config_dir)
        if not os.path.isdir(args.config_dir):
            raise CommandError(f"--config-dir={args.config_dir}: no such directory")
    if args.config_path is not None and not _absolute(args.config_path):
        args.config_path = os.path.abspath(args.config_path)
    if args.config_path is not None and not args.config_path.startswith("pkg://") \
            and not os.path.isdir(args.config_path):
        raise CommandError(f"--config-path={args.config_path}: no such directory")
    # Hydra's own rules, checked here so that breaking them is one line, not a traceback.
    if args.run + args.multirun + (args.cfg is not None) + args.shell_completion \
            + (args.info is not None) > 1:
        raise CommandError("only one of --run, --multirun, --cfg, --info and "
                           "--shell-completion at a time")
    if args.resolve and not (args.cfg or args.help):
        raise CommandError("--resolve goes with --cfg or --help")
    if args.shell_completion and not any(o.split("=", 1)[0] in SHELL_COMPLETION_COMMANDS
                                         for o in args.overrides):
        raise CommandError("--shell-completion needs one of install=SHELL, uninstall=SHELL "
                           "or query=SHELL (SHELL: bash, zsh or fish); for example: "
                           "eval \"$(rnnsweep -sc install=bash)\"")
    return Command(args, parser)


def run(command: Command, task_function: TaskFunction) -> None:
    """Hands the parsed command to Hydra, as ``@hydra.main`` would have."""
    version.setbase(VERSION_BASE)
    if command.args.experimental_rerun is not None:
        task_function(hydra_private.rerun_config(command.args.experimental_rerun,
                                                 command.overrides))
        return
    hydra_private.run(command.args, command.parser, task_function, command.config_path,
                      command.config_name)


def _refuse(message: str):
    raise CommandError(message)


def _absolute(path: str) -> bool:
    return os.path.isabs(path) or path.startswith("pkg://")
