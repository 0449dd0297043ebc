"""What serving needs of a model, said here so that ``rnnsweep.deploy`` imports nothing of
the trial side (``rnnsweep.trial.run`` imports deploy, never the reverse).
``rnnsweep.trial.models.RecurrentNet`` is one; the type checker checks it where the trial
hands one over."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, Self, overload

import torch
from torch import nn

# The recurrent state as the library lays it out: ``(h, c)`` for an LSTM, ``h`` otherwise,
# each ``(num_layers, batch, hidden_size)``.
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class RecurrentModel(Protocol):
    """A ``torch.nn.Module`` that carries its recurrent state across calls:
    ``model(x, state)`` returns ``(y, hidden, state)`` (the output per timestep, the last
    layer's hidden sequence and the state after ``x``), batch first."""

    cell: str  # "lstm", "gru" or "rnn": an LSTM's state is a pair
    input_size: int
    hidden_size: int
    num_layers: int

    # The state comes back in the layout it went in: a pair for a pair.
    @overload
    def __call__(self, x: torch.Tensor, state: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    @overload
    def __call__(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]: ...

    @overload
    def __call__(self, x: torch.Tensor, state: None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, State]: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def eval(self) -> Self: ...

    def cpu(self) -> Self: ...

    def to(self, device: torch.device) -> Self: ...
