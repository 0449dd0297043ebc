"""Guarded training steps (docs/experiments.md, experiment 4).

A step is skipped, and counted, when the forward output, the loss or the gradients are
non-finite. The total gradient norm is measured before clipping and after it.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from rnnsweep.trial.models import split_output

# Columns of the per-step row that is moved to the host once per step.
COLUMNS = ("loss", "grad_norm", "grad_norm_clipped", "output_finite", "saturation")


@dataclass
class GuardSettings:
    max_norm: float | None = None
    explode_threshold: float = 100.0
    vanish_threshold: float = 1e-6
    saturation_level: float = 0.99
    inject_nan_steps: frozenset[int] = frozenset()
    raise_at_step: int | None = None


@dataclass
class TrainResult:
    series: dict[str, list[float]]
    counts: dict[str, int] = field(default_factory=dict)
    step_times_s: list[float] = field(default_factory=list)
    output_dtype: str = ""

    @property
    def steady_step_times_s(self) -> list[float]:
        # The first step pays for allocator and kernel warm-up; it is not a steady step.
        return self.step_times_s[1:] or self.step_times_s

    @property
    def step_time_ms(self) -> float:
        return statistics.median(self.steady_step_times_s) * 1e3


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


def train(model: nn.Module, batch_at, steps: int, optimizer: torch.optim.Optimizer,
          device: torch.device, amp_dtype: torch.dtype | None, grad_scaler: bool,
          guard: GuardSettings, loss_fn=None) -> TrainResult:
    """Runs ``steps`` guarded steps. ``batch_at(step)`` yields ``(inputs, targets)``;
    ``loss_fn(prediction, targets)`` scores them (MSE when not given)."""
    loss_fn = loss_fn or (lambda pred, target: nn.functional.mse_loss(pred.float(), target))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    scaler = torch.amp.GradScaler(device.type) if grad_scaler else None
    nan = torch.tensor(float("nan"), device=device)
    series: dict[str, list[float]] = {name: [] for name in COLUMNS}
    if scaler:
        series["grad_scale"] = []
    counts = dict.fromkeys(
        ("nonfinite_steps", "nan_forward_steps", "nan_loss_steps", "nan_backward_steps",
         "exploding_steps", "vanishing_steps"), 0)
    result = TrainResult(series=series, counts=counts)
    started = time.perf_counter()
    for step in range(steps):
        if step == guard.raise_at_step:
            raise RuntimeError(f"injected failure at step {step} (guard.raise_at_step)")
        x, target = batch_at(step)
        if step in guard.inject_nan_steps:
            x = x * nan
        with autocast(device, amp_dtype):
            prediction, hidden = split_output(model(x))
            loss = loss_fn(prediction, target)
        result.output_dtype = str(hidden.dtype).removeprefix("torch.")
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
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
        if _classify(values, guard, counts):
            if scaler:
                scaler.step(optimizer)
            else:
                optimizer.step()
        if scaler:
            scaler.update()  # after an overflow this lowers the scale for the next step
        for name, value in values.items():
            series[name].append(value)
        now = time.perf_counter()
        result.step_times_s.append(now - started)
        started = now
    return result


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
