"""Synthetic training data, made on the trial's device."""

from __future__ import annotations

from collections.abc import Callable

import torch

Batch = tuple[torch.Tensor, torch.Tensor]


def batches(task: str, batch: int, seq_len: int, input_size: int, output_size: int,
            device: torch.device, seed: int) -> Callable[[int], Batch]:
    """Returns ``step -> (inputs, targets)``; targets align with ``select_output``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    if task == "regression":
        # One fixed batch: the loss falls as the model fits it, so curves are comparable.
        x = torch.randn(batch, seq_len, input_size, generator=gen, device=device)
        y = torch.randn(batch, seq_len, output_size, generator=gen, device=device)
        return lambda step: (x, y)
    if task == "adding":
        return lambda step: _adding_batch(batch, seq_len, input_size, device, gen)
    raise ValueError(f"unknown task {task!r}")


def _adding_batch(batch: int, seq_len: int, input_size: int, device: torch.device,
                  gen: torch.Generator) -> Batch:
    """The adding problem: channel 0 holds values in [0, 1), channel 1 marks two positions
    (one in each half); the target is the sum of the two marked values. Extra input
    channels stay zero. Predicting the mean (1.0) scores an MSE of about 0.167."""
    x = torch.zeros(batch, seq_len, input_size, device=device)
    x[:, :, 0] = torch.rand(batch, seq_len, generator=gen, device=device)
    half = max(seq_len // 2, 1)
    rows = torch.arange(batch, device=device)
    first = torch.randint(0, half, (batch,), generator=gen, device=device)
    second = torch.randint(half, seq_len, (batch,), generator=gen, device=device) if seq_len > 1 \
        else first
    x[rows, first, 1] = 1.0
    x[rows, second, 1] = 1.0
    y = (x[rows, first, 0] + x[rows, second, 0]).unsqueeze(-1)
    return x, y


def select_output(task: str, prediction: torch.Tensor) -> torch.Tensor:
    """The adding problem is scored on the last timestep only."""
    return prediction[:, -1] if task == "adding" else prediction
