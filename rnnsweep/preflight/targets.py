"""Checks of the ``_target_`` a model or task config names, before any trial starts.

The built-in models and synthetic tasks are known good and cost nothing to check. A
user's model (or a task that reads a file) is imported, built and run once on a probe
batch of two sequences, so that a target that does not import, a constructor that
rejects its keys or an output of the wrong shape is one line now rather than a failed
trial later. Only that probe imports torch, and only when there is something to probe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import typing
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from rnnsweep.config import schema
from rnnsweep.config.schema import BUILTIN_MODEL
from rnnsweep.text import first_line

_SYNTHETIC_TASKS = ("rnnsweep.trial.data.Regression", "rnnsweep.trial.data.Adding")


# The schema each built-in ``_target_``'s config follows: it takes those keys and no other.
_BUILTIN_SCHEMAS = {
    BUILTIN_MODEL: schema.ModelConfig,
    "rnnsweep.trial.data.Regression": schema.TaskConfig,
    "rnnsweep.trial.data.Adding": schema.TaskConfig,
    "rnnsweep.trial.data.CharText": schema.TextTaskConfig,
}


def check_config(cfg: DictConfig) -> None:
    """What needs no import: the keys rnnsweep itself reads, keys nothing takes, and
    files that must exist."""
    check_keys(cfg)
    for group, keys in (("model", ("_target_", "input_size")), ("task", ("_target_",))):
        for key in keys:
            if OmegaConf.select(cfg, f"{group}.{key}") is None:
                raise ValueError(f"{group}.{key}: missing; a {group} config names its class "
                                 f"with _target_" + (" and the width of its input with "
                                                     "input_size" if group == "model" else ""))
    path = OmegaConf.select(cfg, "task.path")
    if path is not None and not Path(str(path)).expanduser().is_file():
        raise ValueError(f"task.path={path}: no such file")


def check_keys(cfg: DictConfig) -> None:
    """Refuses a key that nothing takes (``+model.extra=1``, ``+task.path=...`` on
    regression, ``+precision.x._target_=builtins.open``). Hydra's ``+`` adds a key even to
    a structured config, and an unknown key under a built-in model or task would reach
    its constructor through ``instantiate``, which builds any nested ``_target_`` it
    finds: a command line could run code. A user's own model or task is checked against
    its constructor when it is probed (:func:`check`)."""
    groups, hints = _top_level()
    for key in cfg:
        if key not in groups:
            raise ValueError(f"{key!s}: unknown key; allowed top-level keys: "
                             f"{', '.join(sorted(groups))}")
        node = cfg[key]
        known = hints[key] if dataclasses.is_dataclass(hints[key]) else None
        if key in ("model", "task"):
            known = _BUILTIN_SCHEMAS.get(str(OmegaConf.select(cfg, f"{key}._target_")))
        if known is None or not isinstance(node, DictConfig):
            continue
        _known_keys(node, known, key)


@functools.cache
def _top_level() -> tuple[dict[str, Any], dict[str, Any]]:
    """The schema's top-level keys and their types, read once (``get_type_hints``
    evaluates every annotation each call: a millisecond a trial)."""
    return ({f.name: f.type for f in dataclasses.fields(schema.RnnsweepConfig)},
            typing.get_type_hints(schema.RnnsweepConfig))


def _known_keys(node: DictConfig, known: type, where: str) -> None:
    allowed = {f.name for f in dataclasses.fields(known)}
    for key in node:
        if key not in allowed:
            raise ValueError(f"{where}.{key!s}: unknown key; allowed keys in {where}: "
                             f"{', '.join(sorted(allowed))}")


def constructor_keys(target: str) -> list[str] | None:
    """The keyword parameters of the callable ``target`` names, or None when it takes
    any keyword (``**kwargs``) or cannot be read (imports it: the user's code)."""
    try:
        found = imported(target)
        params = inspect.signature(found).parameters.values()
    except Exception:  # noqa: BLE001 - not importable, or no signature: nothing to list
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def _check_constructor(cfg: DictConfig, group: str) -> None:
    """A user's model or task gets only keys its constructor takes, before it is built:
    a mistyped key is named with the constructor's own parameters."""
    target = str(cfg[group]._target_)
    params = constructor_keys(target)
    if params is None:
        return
    # What rnnsweep itself passes or reads beside the constructor's own keys.
    given_by_rnnsweep = {"model": {"output_size"},
                         "task": {"batch", "seq_len", "input_size", "device", "seed"}}[group]
    ignored = {"_target_", *(schema.TRAINING_KEYS if group == "task" else ())}
    allowed = sorted(set(params) - given_by_rnnsweep)
    for key in cfg[group]:
        if key not in ignored and key not in params:
            raise ValueError(f"{group}.{key}: {target} takes no such parameter; its "
                             f"parameters: {', '.join(allowed) or 'none'}")


def check(trials: Iterable[DictConfig]) -> None:
    """Probes each distinct user model / file-backed task among ``trials`` once."""
    seen: set[str] = set()
    for cfg in trials:
        if cfg.model._target_ == BUILTIN_MODEL and cfg.task._target_ in _SYNTHETIC_TASKS:
            continue
        probed = {k: cfg[k] for k in ("model", "task", "seq_len", "batch")}
        key = json.dumps(OmegaConf.to_container(OmegaConf.create(probed), resolve=True,
                                                enum_to_str=True), sort_keys=True)
        if key not in seen:
            seen.add(key)
            _probe(cfg)


def _probe(cfg: DictConfig) -> None:
    import torch

    from rnnsweep.trial.run import build_model, build_source, probe_model

    for group in ("model", "task"):
        target = cfg[group]._target_
        try:
            imported(target)
        except Exception as exc:  # noqa: BLE001 - any import failure is the user's to see
            raise ValueError(f"{group}._target_={target}: cannot import it: "
                             f"{_cause(exc)}") from None
        if target not in _BUILTIN_SCHEMAS:
            _check_constructor(cfg, group)
    device = torch.device("cpu")
    stage = "task"
    try:
        source = build_source(cfg, device)
        stage = "model"
        model = build_model(cfg, source.output_size)
        stage = "probe"
        probe_model(model, cfg, source.output_size, device)
    except Exception as exc:  # noqa: BLE001 - whatever the user's code raises is theirs to see
        where = "model" if stage == "probe" else stage
        what = "on a probe batch" if stage == "probe" else "rejects its config"
        raise ValueError(f"{where}._target_={cfg[where]._target_} {what}: "
                         f"{_cause(exc)}") from None


def _cause(exc: BaseException) -> str:
    """The innermost error's first line (Hydra wraps a constructor's in its own)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {first_line(str(exc))}"


def imported(target: str) -> Callable[..., Any]:
    """The callable ``target`` names (a class or a function), imported: the user's code
    runs. Raises what the import raised, or ``ValueError`` for a name that is not callable."""
    with _quiet(logging.getLogger("hydra.utils")):
        return get_method(target)


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Hydra's lookup logs its error before raising it; the caller says it once, in a line."""
    before, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = before
