"""A trial that runs in this process (no Ray) is held to this machine, as Ray holds a
sweep's trials to its nodes."""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from rnnsweep.config.errors import ConfigError


def check_local_cpus(cfg: DictConfig) -> None:
    """A trial that runs in this process (no Ray) is held to this machine's CPUs, as Ray
    holds a sweep's trials to its nodes'."""
    cpus = OmegaConf.select(cfg, "hardware.num_cpus")
    have = len(os.sched_getaffinity(0))
    if cpus is not None and cpus > have:
        raise ConfigError(f"hardware.num_cpus={cpus:g}: this machine has {have} CPUs; "
                          f"allowed: null or a number in (0, {have}]")


def check_local_gpus(cfg: DictConfig) -> None:
    """A trial that runs in this process (no Ray) gets no more GPUs than this machine has:
    asked for and not there, it would run on CPU without a word."""
    gpus = float(OmegaConf.select(cfg, "hardware.num_gpus") or 0)
    if gpus <= 1:
        return  # none, a fraction or one: check_trial has checked that CUDA is there
    import torch  # only here: a sweep on Ray never pays for it in the driver

    have = torch.cuda.device_count()
    if gpus > have:
        raise ConfigError(f"hardware.num_gpus={gpus:g}: this machine has {have} GPUs; "
                          f"allowed: a number in [0, {have}]")
