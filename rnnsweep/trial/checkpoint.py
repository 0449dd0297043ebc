"""A training trial's whole state on disk, so that a retried or resumed trial goes on
from its last save instead of step 0.

One directory per trial config (its config hash) under ``checkpoint.dir``: a trial
retried after its worker died, and the same trial in a sweep rerun after its driver
died, both find it. Writes are atomic (a temporary file renamed over the last save), so
a worker killed mid-save leaves the previous checkpoint whole.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

FILE = "checkpoint.pt"


def relayed_dir(config_hash: str) -> Path:
    """checkpoint.store=artifacts: the node-local directory a trial saves into, and that
    a retry's resume point (the run's copy, from the driver) is written to first."""
    return Path(tempfile.gettempdir()) / "rnnsweep-checkpoints" / config_hash


class Checkpointer:
    def __init__(self, directory: Path, every_s: float | None, every_steps: int | None,
                 keep: bool) -> None:
        self.directory, self.every_s, self.every_steps, self.keep = (
            directory, every_s, every_steps, keep)
        self._last_save = time.monotonic()
        self.saves = 0
        self.save_s = 0.0  # total time spent saving
        # Told of each save's file (checkpoint.store=artifacts: the worker sends it on).
        self.on_save: Callable[[str], None] | None = None

    @property
    def path(self) -> Path:
        return self.directory / FILE

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        # Our own file, written by this trial's config in an earlier attempt.
        state: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=False)
        return state

    def due(self, step: int) -> bool:
        """After training step ``step`` (0-based): is a save due?"""
        if self.every_steps and (step + 1) % self.every_steps == 0:
            return True
        if not self.every_s:
            return False
        return time.monotonic() - self._last_save >= self.every_s

    def save(self, state: dict[str, Any]) -> None:
        began = time.perf_counter()
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{FILE}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        self._last_save = time.monotonic()
        self.saves += 1
        self.save_s += time.perf_counter() - began
        if self.on_save is not None:
            self.on_save(str(self.path))

    def finish(self) -> None:
        """The trial is over: its checkpoints go, unless ``checkpoint.keep``."""
        if not self.keep:
            shutil.rmtree(self.directory, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    # torch.cuda.is_initialized carries no annotations.
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
