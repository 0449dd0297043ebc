"""Guarded training steps (docs/experiments.md, experiment 4).

A step is skipped, and counted, when the forward output, the loss or the gradients are
non-finite. The total gradient norm is measured before clipping and after it.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rnnsweep.trial import checkpoint
from rnnsweep.trial.checkpoint import Checkpointer
from rnnsweep.trial.data import Batch
from rnnsweep.trial.live import Live
from rnnsweep.trial.models import split_output

# Columns of the per-step row that is moved to the host once per step.
COLUMNS = ("loss", "grad_norm", "grad_norm_clipped", "output_finite", "saturation")
# Host-side values of each step: the learning rate it stepped with, its time and rate.
PER_STEP = ("lr", "step_ms", "seq_per_s")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class GuardSettings:
    max_norm: float | None = None
    explode_threshold: float = 100.0
    vanish_threshold: float = 1e-6
    saturation_level: float = 0.99
    inject_nan_steps: frozenset[int] = frozenset()
    raise_at_step: int | None = None
    hang_at_step: int | None = None
    stop_after_nonfinite: int | None = None


@dataclass
class TrainResult:
    series: dict[str, list[float]]
    counts: dict[str, int] = field(default_factory=dict)
    step_times_s: list[float] = field(default_factory=list)  # this attempt's steps
    output_dtype: str = ""
    # Measured at some steps only (held-out evaluation): name -> {step: value}.
    sparse: dict[str, dict[int, float]] = field(default_factory=dict)
    resumed_from_step: int = 0
    last_step: int = 0  # steps done, the resumed ones included
    # (outcome, reason, steps done) when the loop ended before its last step.
    stopped: tuple[str, str, int] | None = None

    @property
    def steady_step_times_s(self) -> list[float]:
        # The first step pays for allocator and kernel warm-up; it is not a steady step.
        return self.step_times_s[1:] or self.step_times_s

    @property
    def step_time_ms(self) -> float:
        return statistics.median(self.steady_step_times_s) * 1e3


def autocast(device: torch.device,
             dtype: torch.dtype | None) -> contextlib.AbstractContextManager[object]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, steps: int, gamma: float,
                   step_every: int | None) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``task.schedule``: constant (None), cosine to zero at the last step, or step (the
    rate times ``gamma`` every ``step_every`` steps; by default at a third and two thirds)."""
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    if name == "step":
        if step_every:
            return torch.optim.lr_scheduler.StepLR(optimizer, step_every, gamma)
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, [max(steps // 3, 1), max(2 * steps // 3, 1)], gamma)
    return None


@dataclass
class Hooks:
    """What a long trial adds to the loop; every part optional."""

    live: Live | None = None  # per-step values out, stop requests in
    evaluate: Callable[[], dict[str, float]] | None = None  # held-out metrics, no gradients
    eval_every: int = 0
    checkpoint: Checkpointer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    # The batch source's position (its generator), saved and restored with the rest.
    source_state: tuple[Callable[[], dict[str, Any]],
                        Callable[[dict[str, Any]], None]] | None = None
    batch_size: int = 1  # for the per-step throughput


def train(model: nn.Module, batch_at: Callable[[int], Batch], steps: int,
          optimizer: torch.optim.Optimizer, device: torch.device, amp_dtype: torch.dtype | None,
          grad_scaler: bool, guard: GuardSettings, loss_fn: LossFn | None = None,
          hooks: Hooks | None = None) -> TrainResult:
    """Runs ``steps`` guarded steps. ``batch_at(step)`` yields ``(inputs, targets)``;
    ``loss_fn(prediction, targets)`` scores them (MSE when not given). With a checkpoint
    saved by an earlier attempt of this trial it goes on from there."""
    loss_fn = loss_fn or (lambda pred, target: nn.functional.mse_loss(pred.float(), target))
    hooks = hooks or Hooks()
    live = hooks.live
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    scaler = torch.amp.GradScaler(device.type) if grad_scaler else None
    nan = torch.tensor(float("nan"), device=device)
    series: dict[str, list[float]] = {name: [] for name in (*COLUMNS, *PER_STEP)}
    if scaler:
        series["grad_scale"] = []
    counts = dict.fromkeys(
        ("nonfinite_steps", "nan_forward_steps", "nan_loss_steps", "nan_backward_steps",
         "exploding_steps", "vanishing_steps"), 0)
    result = TrainResult(series=series, counts=counts)
    first = _resume(hooks, model, optimizer, scaler, result)
    if live is not None and first:
        # The history before the checkpoint, for a run that has none of it (a sweep
        # rerun after its driver died); the driver drops steps its run already has.
        live.log_history(series, result.sparse, first)
    nonfinite_in_a_row = 0
    started = time.perf_counter()
    for step in range(first, steps):
        if live is not None and live.stop is not None:
            result.stopped = (live.stop.outcome, live.stop.reason, step)
            break
        if step == guard.raise_at_step:
            raise RuntimeError(f"injected failure at step {step} (guard.raise_at_step)")
        if step == guard.hang_at_step:
            threading.Event().wait()  # a dead data source: only a time limit ends this
        x, target = batch_at(step)
        if step in guard.inject_nan_steps:
            x = x * nan
        with autocast(device, amp_dtype):
            prediction, hidden = split_output(model(x))
            loss = loss_fn(prediction, target)
        result.output_dtype = str(hidden.dtype).removeprefix("torch.")
        optimizer.zero_grad(set_to_none=True)
        # Tensor.backward carries no annotations.
        (scaler.scale(loss) if scaler else loss).backward()  # type: ignore[no-untyped-call]
        if scaler:
            scaler.unscale_(optimizer)  # clip and measure true gradients, not scaled ones
        grads = [p.grad for p in params if p.grad is not None]
        if guard.max_norm is None:
            norm = torch.nn.utils.get_total_norm(grads)
            clipped = norm
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, guard.max_norm)  # pre-clip norm
            clipped = torch.nn.utils.get_total_norm(grads)
        hidden = hidden.detach()
        row = torch.stack([
            loss.detach().float(), norm.float(), clipped.float(),
            torch.isfinite(hidden).all().float(),
            (hidden.abs() > guard.saturation_level).float().mean(),
        ])
        # CPU-GPU sync point, once per step: the guard needs its verdict, and these are
        # the values that get logged.
        values = dict(zip(COLUMNS, row.tolist(), strict=True))
        if scaler:
            values["grad_scale"] = scaler.get_scale()  # the stream is idle: no extra wait
        values["lr"] = optimizer.param_groups[0]["lr"]
        if _classify(values, guard, counts):
            if scaler:
                scaler.step(optimizer)
            else:
                optimizer.step()
        if scaler:
            scaler.update()  # after an overflow this lowers the scale for the next step
        if hooks.scheduler is not None:
            hooks.scheduler.step()
        now = time.perf_counter()
        step_s = now - started
        result.step_times_s.append(step_s)
        values["step_ms"] = step_s * 1e3
        values["seq_per_s"] = hooks.batch_size / step_s if step_s > 0 else math.nan
        for name, value in values.items():
            series[name].append(value)
        nonfinite_in_a_row = 0 if math.isfinite(values["loss"]) else nonfinite_in_a_row + 1
        if hooks.evaluate is not None and hooks.eval_every and (
                (step + 1) % hooks.eval_every == 0 or step == steps - 1):
            for name, value in hooks.evaluate().items():
                result.sparse.setdefault(name, {})[step] = value
                values[name] = value
        if live is not None:
            live.log(step, {k: v for k, v in values.items() if k != "output_finite"})
        if hooks.checkpoint is not None and step < steps - 1 and hooks.checkpoint.due(step):
            hooks.checkpoint.save(_state(step + 1, model, optimizer, scaler, hooks, result))
        if guard.stop_after_nonfinite and nonfinite_in_a_row >= guard.stop_after_nonfinite:
            result.stopped = ("DIVERGED", f"the loss was non-finite for {nonfinite_in_a_row} "
                              f"steps in a row (guard.stop_after_nonfinite="
                              f"{guard.stop_after_nonfinite}); stopped at step {step}", step + 1)
            break
        # Evaluation and saving are not the next step's time.
        started = time.perf_counter()
    result.last_step = first + len(result.step_times_s)
    if hooks.checkpoint is not None and hooks.checkpoint.keep:
        # The final state, for whoever wants the trained weights back (checkpoint.keep).
        hooks.checkpoint.save(_state(result.last_step, model, optimizer, scaler, hooks, result))
    return result


def _state(step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
           scaler: torch.amp.GradScaler | None, hooks: Hooks,
           result: TrainResult) -> dict[str, Any]:
    """Everything the loop needs to go on from ``step`` as if it had never stopped."""
    return {
        "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler else None,
        "scheduler": hooks.scheduler.state_dict() if hooks.scheduler else None,
        "source": hooks.source_state[0]() if hooks.source_state else {},
        "rng": checkpoint.rng_state(),
        "series": result.series, "sparse": result.sparse, "counts": result.counts,
    }


def _resume(hooks: Hooks, model: nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler | None, result: TrainResult) -> int:
    """The step to start from: 0, or the step of an earlier attempt's last checkpoint,
    with every piece of state it saved put back."""
    saved = hooks.checkpoint.load() if hooks.checkpoint is not None else None
    if not saved:
        return 0
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scaler is not None and saved["scaler"]:
        scaler.load_state_dict(saved["scaler"])
    if hooks.scheduler is not None and saved["scheduler"]:
        hooks.scheduler.load_state_dict(saved["scheduler"])
    if hooks.source_state is not None:
        hooks.source_state[1](saved["source"])
    checkpoint.set_rng_state(saved["rng"])
    for name, values in saved["series"].items():
        result.series.setdefault(name, []).extend(values)
    result.sparse.update(saved["sparse"])
    result.counts.update(saved["counts"])
    start: int = saved["step"]
    result.resumed_from_step = start
    return start


def _classify(values: dict[str, float], guard: GuardSettings, counts: dict[str, int]) -> bool:
    """Counts what went wrong in a step; True when the optimizer may step."""
    norm = values["grad_norm"]
    if values["output_finite"] < 1:
        counts["nan_forward_steps"] += 1
    elif not math.isfinite(values["loss"]):
        counts["nan_loss_steps"] += 1
    elif not math.isfinite(norm):
        counts["nan_backward_steps"] += 1
    else:
        if norm > guard.explode_threshold:
            counts["exploding_steps"] += 1
        elif norm < guard.vanish_threshold:
            counts["vanishing_steps"] += 1
        return True
    counts["nonfinite_steps"] += 1
    return False
