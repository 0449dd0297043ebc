"""Batch sources: what a trial trains on, and the loss that scores it.

A source is built from the ``task`` config (``_target_`` and its own keys) plus
``batch``, ``seq_len``, ``input_size``, ``device`` and ``seed``. It offers:

- ``output_size``: what the model must output per timestep;
- ``batch(step) -> (inputs, targets)``, inputs ``(batch, seq_len, input_size)``;
- ``loss(prediction, targets)``: a scalar tensor;
- ``summary(final_loss) -> dict``: extra metrics for the trial (may be empty).

Users name their own class with ``task._target_``; these are the built-ins.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]
CORPUS = Path(__file__).resolve().parent / "corpus" / "public_domain.txt"


class Regression:
    """MSE against one fixed random target per timestep: the loss falls as the model fits
    it, so curves are comparable across configurations."""

    def __init__(self, batch: int, seq_len: int, input_size: int, device: torch.device,
                 seed: int, output_size: int = 1) -> None:
        gen = torch.Generator(device=device).manual_seed(seed)
        self.output_size = output_size
        self.x = torch.randn(batch, seq_len, input_size, generator=gen, device=device)
        self.y = torch.randn(batch, seq_len, output_size, generator=gen, device=device)

    def batch(self, step: int) -> Batch:
        return self.x, self.y

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(prediction.float(), target)

    def summary(self, final_loss: float) -> dict[str, float]:
        return {}


class Adding(Regression):
    """The adding problem: channel 0 holds values in [0, 1), channel 1 marks two positions
    (one in each half); the target is the sum of the two marked values, scored on the
    last timestep. Extra input channels stay zero. Predicting the mean (1.0) scores an
    MSE of about 0.167."""

    def __init__(self, batch: int, seq_len: int, input_size: int, device: torch.device,
                 seed: int) -> None:
        if input_size < 2:
            raise ValueError(f"model.input_size={input_size}: task=adding needs >= 2 "
                             "(a value channel and a marker channel)")
        self.output_size = 1
        self.shape, self.device = (batch, seq_len, input_size), device
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def batch(self, step: int) -> Batch:
        batch, seq_len, input_size = self.shape
        device, gen = self.device, self.gen
        x = torch.zeros(batch, seq_len, input_size, device=device)
        x[:, :, 0] = torch.rand(batch, seq_len, generator=gen, device=device)
        half = max(seq_len // 2, 1)
        rows = torch.arange(batch, device=device)
        first = torch.randint(0, half, (batch,), generator=gen, device=device)
        second = first if seq_len < 2 else \
            torch.randint(half, seq_len, (batch,), generator=gen, device=device)
        x[rows, first, 1] = 1.0
        x[rows, second, 1] = 1.0
        y = (x[rows, first, 0] + x[rows, second, 0]).unsqueeze(-1)
        return x, y

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(prediction[:, -1].float(), target)


class CharText:
    """Character-level language modelling over a UTF-8 text file: each step, random
    windows of the text, one-hot encoded; the model predicts every next character.
    ``bits_per_char`` is the cross-entropy in bits."""

    def __init__(self, batch: int, seq_len: int, input_size: int, device: torch.device,
                 seed: int, path: str | None = None) -> None:
        text = read_text(path)
        vocab = sorted(set(text))
        if input_size < len(vocab):
            raise ValueError(f"model.input_size={input_size}: task=char_lm one-hot encodes "
                             f"the {len(vocab)} distinct characters of {path or CORPUS.name}; "
                             f"needs >= {len(vocab)}")
        if len(text) < seq_len + 2:
            raise ValueError(f"seq_len={seq_len}: {path or CORPUS.name} has only {len(text)} "
                             "characters")
        index = {ch: i for i, ch in enumerate(vocab)}
        self.codes = torch.tensor([index[ch] for ch in text], device=device)
        self.output_size, self.input_size = len(vocab), input_size
        self.batch_size, self.seq_len, self.device = batch, seq_len, device
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def batch(self, step: int) -> Batch:
        starts = torch.randint(0, len(self.codes) - self.seq_len - 1, (self.batch_size, 1),
                               generator=self.gen, device=self.device)
        windows = self.codes[starts + torch.arange(self.seq_len + 1, device=self.device)]
        x = nn.functional.one_hot(windows[:, :-1], self.input_size).float()
        return x, windows[:, 1:]

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(prediction.float().flatten(0, 1), target.flatten())

    def summary(self, final_loss: float) -> dict[str, float]:
        return {"bits_per_char": final_loss / math.log(2)}


def read_text(path: str | None) -> str:
    """The named file, or the public-domain corpus that ships with rnnsweep."""
    return Path(path or CORPUS).expanduser().read_text(encoding="utf-8")


def batches(task: str, batch: int, seq_len: int, input_size: int, output_size: int,
            device: torch.device, seed: int) -> Callable[[int], Batch]:
    """``step -> (inputs, targets)`` of a built-in synthetic task (benchmarks use it)."""
    if task == "regression":
        return Regression(batch, seq_len, input_size, device, seed, output_size).batch
    if task == "adding":
        return Adding(batch, seq_len, input_size, device, seed).batch
    raise ValueError(f"unknown task {task!r}")
