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
- A worker runs each trial through :func:`run_job`, Hydra's own ``run_job`` step for step
  with cheaper copies and YAML: for a trial of a tenth of a second, Hydra's copies and
  its three YAML files were half its worker's CPU.

Tested, access by access, in ``tests/test_adapters.py``.
"""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path
from typing import Any

import yaml
from hydra import version
from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra._internal.core_plugins import basic_sweeper
from hydra._internal.deprecation_warning import deprecation_warning
from hydra._internal.hydra import Hydra
from hydra._internal.utils import (
    _run_hydra,
    create_automatic_config_search_path,
    detect_task_name,
    get_args_parser,
)
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _check_hydra_context,
    _flush_loggers,
    configure_log,
    env_override,
)
from hydra.main import _get_rerun_conf
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf._utils import get_omega_conf_dumper

# The module of Hydra's basic sweeper, whose ``BasicSweeper`` and ``BasicSweeperConf`` the
# shim's sweeper extends. The module, not its classes: Hydra's plugin scan executes its core
# plugins' modules again, and ``BasicSweeper`` names the class of the latest run in its own
# ``super(BasicSweeper, self)``; a subclass of an earlier one cannot be built.
__all__ = ["apply_overrides", "args_parser", "basic_sweeper", "fresh_copy", "job_value",
           "overrides_dirname", "rerun_config", "run", "run_job", "search_path", "split_sweep",
           "start", "task_name", "to_yaml"]


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


def run_job(task_function: TaskFunction, config: DictConfig, job_dir_key: str,
            job_subdir_key: str | None, hydra_context: HydraContext) -> JobReturn:
    """Hydra 1.3's ``hydra.core.utils.run_job``, step for step (the job's output directory,
    ``HydraConfig``, its logging, ``.hydra/`` files, ``env_set``, callbacks, working
    directory and ``JobReturn``), for a job whose config is a root (as a sweep's are),
    with its copies cut (each copies the ``hydra`` node, about 5 ms a trial): the task's
    config is copied through pickle (``fresh_copy``) rather than ``copy.deepcopy``;
    ``HydraConfig`` is set once before the output directory is read only where that
    directory's keys call the ``hydra:`` resolver (it reads ``HydraConfig``); the job's
    ``hydra_cfg`` is the copy ``HydraConfig`` made for this job, which nothing changes once
    the job is over, not a copy of that; and ``.hydra/*.yaml`` are written by libyaml
    (``to_yaml``). ``tests/test_adapters.py`` pins the Hydra source this follows."""
    _check_hydra_context(hydra_context)
    callbacks = hydra_context.callbacks
    old_cwd = os.getcwd()
    orig_hydra_cfg = HydraConfig.instance().cfg
    if _reads_hydra_config(config, job_dir_key, job_subdir_key):
        HydraConfig.instance().set_config(config)
    output_dir = str(OmegaConf.select(config, job_dir_key))
    if job_subdir_key is not None:
        output_dir = os.path.join(output_dir, str(OmegaConf.select(config, job_subdir_key)))
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = os.path.abspath(output_dir)
    HydraConfig.instance().set_config(config)
    chdir = False
    try:
        ret = JobReturn()
        task_cfg = fresh_copy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        ret.cfg = task_cfg
        # A masked root whose ``hydra`` node's parent is the job's config, made for this
        # job by set_config above; the finally below puts back the one before, so this
        # one is the job's alone.
        hydra_cfg = HydraConfig.instance().cfg
        assert isinstance(hydra_cfg, DictConfig)
        ret.hydra_cfg = hydra_cfg
        overrides = OmegaConf.to_container(config.hydra.overrides.task)
        assert isinstance(overrides, list)
        ret.overrides = overrides
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        chdir = hydra_cfg.hydra.job.chdir
        if chdir is None:  # Hydra's default: no chdir from version_base 1.2 on
            chdir = not version.base_at_least("1.2")
            if chdir:
                deprecation_warning(
                    message="Future Hydra versions will no longer change working directory "
                            "at job runtime by default.\nSee https://hydra.cc/docs/1.2/"
                            "upgrades/1.1_to_1.2/changes_to_job_working_dir/ for more "
                            "information.", stacklevel=2)
        if chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()
        configure_log(config.hydra.job_logging, config.hydra.verbose)
        if config.hydra.output_subdir is not None:
            hydra_output = Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir)
            hydra_output.mkdir(parents=True, exist_ok=True)
            for cfg, name in ((task_cfg, "config.yaml"), (hydra_cfg, "hydra.yaml"),
                              (config.hydra.overrides.task, "overrides.yaml")):
                (hydra_output / name).write_text(to_yaml(cfg), encoding="utf-8")
        with env_override(hydra_cfg.hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=task_function)
            try:
                ret.return_value = task_function(task_cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as exc:  # noqa: BLE001 - Hydra's own: the job's result
                ret.return_value = exc
                ret.status = JobStatus.FAILED
        ret.task_name = JobRuntime.instance().get("name")
        _flush_loggers()
        callbacks.on_job_end(config=config, job_return=ret, task_function=task_function)
        return ret
    finally:
        HydraConfig.instance().cfg = orig_hydra_cfg
        if chdir:
            os.chdir(old_cwd)


def _reads_hydra_config(config: DictConfig, *keys: str | None) -> bool:
    """Whether any of these keys' raw values calls the ``hydra:`` resolver."""
    for key in filter(None, keys):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(config, parent) if parent else config
        values = (OmegaConf.to_container(node, resolve=False)
                  if isinstance(node, DictConfig) else None)
        raw = values.get(leaf) if isinstance(values, dict) else None
        if raw is None or "hydra:" in str(raw):
            return True  # not found as a plain key: do as Hydra does
    return False


def fresh_copy(config: DictConfig) -> DictConfig:
    """A deep copy of a root config (no parent) through pickle: the same config as
    ``copy.deepcopy`` makes, in a third of the time (OmegaConf copies node by node in
    Python)."""
    return pickle.loads(pickled(config))


def pickled(config: DictConfig) -> bytes:
    """A root config as bytes, kept where many copies of it are made: each
    ``pickle.loads`` of them is a fresh copy, half the cost of ``fresh_copy``."""
    return pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)


class _Dumper(getattr(yaml, "CDumper", yaml.Dumper)):  # type: ignore[misc]
    """OmegaConf's YAML dumper on libyaml's emitter, where PyYAML has it."""


_Dumper.add_representer(str, get_omega_conf_dumper().str_representer)


def to_yaml(config: Any) -> str:
    """``OmegaConf.to_yaml(config)``, written by libyaml: the same data (strings that read
    as numbers or booleans quoted as OmegaConf quotes them), about four times faster; long
    strings may be folded elsewhere."""
    container = OmegaConf.to_container(config, resolve=False, enum_to_str=True) \
        if OmegaConf.is_config(config) else config
    return yaml.dump(container, default_flow_style=False, allow_unicode=True, sort_keys=False,
                     Dumper=_Dumper)
