"""Batch sources: what a trial trains on, and the loss that scores it.

A source is built from the ``task`` config (``_target_`` and its own keys) plus
``batch``, ``seq_len``, ``input_size``, ``device`` and ``seed``. It offers:

- ``output_size``: what the model must output per timestep;
- ``batch(step) -> (inputs, targets)``, inputs ``(batch, seq_len, input_size)``;
- ``loss(prediction, targets)``: a scalar tensor;
- ``summary(final_loss) -> dict``: extra metrics for the trial (may be empty); applied
  to the held-out loss too, as ``val_<name>``.

Optional, and offered by every built-in source:

- ``validation() -> list[(inputs, targets)]``: a held-out set, never trained on; the
  trial scores it without gradients every ``eval_every`` steps (``val_loss``);
- ``state_dict()`` / ``load_state_dict(state)``: where the source is in its data (its
  random generator), saved in checkpoints so that a resumed trial sees the batches an
  uninterrupted one would have.

Users name their own class with ``task._target_``; these are the built-ins.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


class Source(Protocol):
    """What every source offers (the module docstring lists the optional rest)."""

    output_size: int

    def batch(self, step: int) -> Batch: ...

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    def summary(self, final_loss: float) -> dict[str, float]: ...

CORPUS = Path(__file__).resolve().parent / "corpus" / "public_domain.txt"
# Held-out sets are drawn with the trial's seed plus this: the same for every trial of a
# seed, never the training batches.
VAL_SEED_OFFSET = 1_000_003
VAL_BATCHES = 4  # synthetic tasks: held-out batches of the trial's batch size
TEXT_VAL_FRACTION = 0.1  # char_lm: the last tenth of the text is held out
MAX_VAL_WINDOWS = 256


class _Stateless:
    """A source whose batches do not depend on what came before (nothing to save)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class _Generated:
    """A source that draws its batches from ``self.gen``: its state is the generator's."""

    gen: torch.Generator

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])


class Regression(_Stateless):
    """MSE against a fixed random linear teacher, ``y_t = x_t . w / sqrt(input_size)``, on
    one fixed batch: the loss falls as the model fits it, so curves are comparable across
    configurations. The held-out set is new inputs, drawn with another seed, through the
    same teacher: what the model learnt of the mapping, not of the batch, is what it
    scores."""

    def __init__(self, batch: int, seq_len: int, input_size: int, device: torch.device,
                 seed: int, output_size: int = 1) -> None:
        self.output_size = output_size
        gen = torch.Generator(device=device).manual_seed(seed)
        self.teacher = torch.randn(input_size, output_size, generator=gen,
                                   device=device) / math.sqrt(input_size)
        self.x, self.y = self._draw(batch, seq_len, input_size, device, gen)
        self._val_args = (batch, seq_len, input_size, device, seed + VAL_SEED_OFFSET)

    def _draw(self, batch: int, seq_len: int, input_size: int, device: torch.device,
              gen: torch.Generator | int) -> Batch:
        if isinstance(gen, int):
            gen = torch.Generator(device=device).manual_seed(gen)
        x = torch.randn(batch, seq_len, input_size, generator=gen, device=device)
        return x, x @ self.teacher

    def batch(self, step: int) -> Batch:
        return self.x, self.y

    def validation(self) -> list[Batch]:
        return [self._draw(*self._val_args)]

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(prediction.float(), target)

    def summary(self, final_loss: float) -> dict[str, float]:
        return {}


class Adding(_Generated, Regression):
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
        self.seed = seed

    def batch(self, step: int) -> Batch:
        return self._sample(self.gen)

    def validation(self) -> list[Batch]:
        gen = torch.Generator(device=self.device).manual_seed(self.seed + VAL_SEED_OFFSET)
        return [self._sample(gen) for _ in range(VAL_BATCHES)]

    def _sample(self, gen: torch.Generator) -> Batch:
        batch, seq_len, input_size = self.shape
        device = self.device
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


class CharText(_Generated):
    """Character-level language modelling over a UTF-8 text file: each step, random
    windows of the text, one-hot encoded; the model predicts every next character.
    ``bits_per_char`` is the cross-entropy in bits. The last tenth of the text is held
    out (windows of it are the validation set) and never trained on."""

    def __init__(self, batch: int, seq_len: int, input_size: int, device: torch.device,
                 seed: int, path: str | None = None) -> None:
        text = read_text(path)
        vocab = sorted(set(text))
        if input_size < len(vocab):
            raise ValueError(f"model.input_size={input_size}: task=char_lm one-hot encodes "
                             f"the {len(vocab)} distinct characters of {path or CORPUS.name}; "
                             f"needs >= {len(vocab)}")
        held_out = max(int(len(text) * TEXT_VAL_FRACTION), seq_len + 1)
        if len(text) - held_out < seq_len + 2:
            raise ValueError(f"seq_len={seq_len}: {path or CORPUS.name} has only {len(text)} "
                             f"characters; needs >= {seq_len + 2 + held_out} (a tenth, at least "
                             f"seq_len + 1, is held out for validation)")
        index = {ch: i for i, ch in enumerate(vocab)}
        codes = torch.tensor([index[ch] for ch in text], device=device)
        self.codes, self.val_codes = codes[:-held_out], codes[-held_out:]
        self.output_size, self.input_size = len(vocab), input_size
        self.batch_size, self.seq_len, self.device = batch, seq_len, device
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def batch(self, step: int) -> Batch:
        starts = torch.randint(0, len(self.codes) - self.seq_len - 1, (self.batch_size, 1),
                               generator=self.gen, device=self.device)
        windows = self.codes[starts + torch.arange(self.seq_len + 1, device=self.device)]
        return self._encode(windows)

    def validation(self) -> list[Batch]:
        """Every window of the held-out text, half a window apart, as batches."""
        span = self.seq_len + 1
        starts = torch.arange(0, len(self.val_codes) - span + 1, max(self.seq_len // 2, 1),
                              device=self.device)[:MAX_VAL_WINDOWS]
        windows = self.val_codes[starts.unsqueeze(1) + torch.arange(span, device=self.device)]
        return [self._encode(part) for part in torch.split(windows, max(self.batch_size, 1))]

    def _encode(self, windows: torch.Tensor) -> Batch:
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
