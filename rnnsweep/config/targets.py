"""Checks of the ``_target_`` a model or task config names, before any trial starts.

The built-in models and synthetic tasks are known good and cost nothing to check. A
user's model (or a task that reads a file) is imported, built and run once on a probe
batch of two sequences, so that a target that does not import, a constructor that
rejects its keys or an output of the wrong shape is one line now rather than a failed
trial later. Only that probe imports torch, and only when there is something to probe.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rnnsweep.config.schema import BUILTIN_MODEL

_SYNTHETIC_TASKS = ("rnnsweep.trial.data.Regression", "rnnsweep.trial.data.Adding")


def check_config(cfg: DictConfig) -> None:
    """What needs no import: the keys rnnsweep itself reads, and files that must exist."""
    for group, keys in (("model", ("_target_", "input_size")), ("task", ("_target_",))):
        for key in keys:
            if OmegaConf.select(cfg, f"{group}.{key}") is None:
                raise ValueError(f"{group}.{key}: missing; a {group} config names its class "
                                 f"with _target_" + (" and the width of its input with "
                                                     "input_size" if group == "model" else ""))
    path = OmegaConf.select(cfg, "task.path")
    if path is not None and not Path(str(path)).expanduser().is_file():
        raise ValueError(f"task.path={path}: no such file")


def check(trials: list[DictConfig]) -> None:
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
    from hydra._internal.utils import _locate  # hydra.utils.get_object also logs the error

    from rnnsweep.trial.run import build_model, build_source, probe_model

    for group in ("model", "task"):
        target = cfg[group]._target_
        try:
            _locate(target)
        except Exception as exc:  # noqa: BLE001 - any import failure is the user's to see
            raise ValueError(f"{group}._target_={target}: cannot import it: "
                             f"{_cause(exc)}") from None
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
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
