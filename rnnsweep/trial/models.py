"""Recurrent models: the library's fused kernel or the matching cell stepped in Python.

Both implementations hold the same weights (the loop copies them from a fused module
built with the same seed), so they compute the same function and can be compared.

Any other ``torch.nn.Module`` can be swept too (``model._target_``). Its contract: it is
built with its config's keys plus ``output_size`` (what the task needs per timestep),
takes ``(batch, seq_len, input_size)`` and returns ``(batch, seq_len, output_size)``, or
a tuple with that first (a second tensor, if any, is taken as the hidden activations).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# Callables, not classes: RNNBase's own constructor takes the mode first, its subclasses
# take the sizes.
FUSED: dict[str, Callable[..., nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
CELLS: dict[str, Callable[..., nn.RNNCellBase]] = {
    "lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class RecurrentNet(nn.Module):
    """A stack of recurrent layers (batch first) followed by a linear head per timestep.

    ``forward(x, state)`` returns ``(y, hidden, state)``: the head's output, the last
    layer's hidden sequence and the recurrent state in the library's layout (``(h, c)``
    for LSTM, ``h`` otherwise, each ``(num_layers, batch, hidden)``), so a caller can
    carry state across chunks of a stream.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        impl: str = "fused",
        output_size: int = 1,
        recurrent_init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.cell, self.impl = cell, impl
        self.input_size, self.num_layers, self.hidden_size = input_size, num_layers, hidden_size
        fused = FUSED[cell](input_size, hidden_size, num_layers=num_layers, batch_first=True)
        if recurrent_init_scale != 1.0:
            # Scaling W_hh pushes its spectral radius above 1: the classic exploding setup.
            with torch.no_grad():
                for layer in range(num_layers):
                    getattr(fused, f"weight_hh_l{layer}").mul_(recurrent_init_scale)
        # The head is built before the cells so both implementations draw the same
        # random numbers for it from the seeded generator.
        self.head = nn.Linear(hidden_size, output_size)
        if impl == "fused":
            self.rnn = fused
        else:
            self.cells = nn.ModuleList(_cells_from(fused, cell))

    def forward(
        self, x: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        if self.impl == "fused":
            hidden, state = self.rnn(x, state)
        else:
            hidden, state = self._step_cells(x, state)
        return self.head(hidden), hidden, state

    def _step_cells(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        batch, steps, _ = x.shape
        lstm = self.cell == "lstm"
        if state is None:
            zeros = x.new_zeros(self.num_layers, batch, self.hidden_size)
            state = (zeros, zeros) if lstm else zeros
        # Only the LSTM's state is a (h, c) pair; its cells step both.
        h0, c0 = state if isinstance(state, tuple) else (state, None)
        layer_in = x
        last_h: list[torch.Tensor] = []
        last_c: list[torch.Tensor] = []
        for layer, cell in enumerate(self.cells):
            h = h0[layer]
            c = None if c0 is None else c0[layer]
            outputs = []
            for t in range(steps):
                if c is None:
                    h = cell(layer_in[:, t], h)
                else:
                    h, c = cell(layer_in[:, t], (h, c))
                outputs.append(h)
            layer_in = torch.stack(outputs, dim=1)
            last_h.append(h)
            if c is not None:
                last_c.append(c)
        h_n = torch.stack(last_h)
        return layer_in, (h_n if c0 is None else (h_n, torch.stack(last_c)))


def split_output(result: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prediction, hidden)`` from whatever a model's forward returns (the contract
    above). Without a hidden tensor the prediction stands in for it."""
    if isinstance(result, torch.Tensor):
        return result, result
    if isinstance(result, (tuple, list)) and result and isinstance(result[0], torch.Tensor):
        hidden = result[1] if len(result) > 1 and isinstance(result[1], torch.Tensor) \
            else result[0]
        return result[0], hidden
    raise TypeError(f"the model returned {type(result).__name__}; expected a tensor "
                    "(batch, seq_len, output_size) or a tuple with it first")


def check_output(prediction: torch.Tensor, batch: int, seq_len: int, output_size: int) -> None:
    """A model's output on a probe batch must have the shape the task scores."""
    expected = (batch, seq_len, output_size)
    if tuple(prediction.shape) != expected:
        raise ValueError(f"output shape {tuple(prediction.shape)} on a probe batch "
                         f"({batch}, {seq_len}, input_size); expected {expected}")


def with_impl(model: RecurrentNet, impl: str) -> RecurrentNet:
    """The same network, weights included (trained or not), in the other implementation."""
    if impl == model.impl:
        return model
    fused = model.rnn if model.impl == "fused" else _fused_from(model)
    twin = RecurrentNet(model.cell, fused.input_size, model.hidden_size, model.num_layers,
                        impl, output_size=model.head.out_features)
    twin.head.load_state_dict(model.head.state_dict())
    if impl == "fused":
        twin.rnn.load_state_dict(fused.state_dict())
    else:
        twin.cells = nn.ModuleList(_cells_from(fused, model.cell))
    return twin.to(next(model.parameters()).device)


def _fused_from(model: RecurrentNet) -> nn.RNNBase:
    first = model.cells[0]
    kwargs = {"nonlinearity": first.nonlinearity} if model.cell == "rnn" else {}
    fused = FUSED[model.cell](first.input_size, model.hidden_size, num_layers=model.num_layers,
                              batch_first=True, **kwargs)
    with torch.no_grad():
        for layer, step in enumerate(model.cells):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(fused, f"{name}_l{layer}").copy_(getattr(step, name))
    return fused


def _cells_from(fused: nn.RNNBase, cell: str) -> list[nn.RNNCellBase]:
    cells = []
    for layer in range(fused.num_layers):
        in_size = fused.input_size if layer == 0 else fused.hidden_size
        kwargs = {"nonlinearity": fused.nonlinearity} if cell == "rnn" else {}
        step = CELLS[cell](in_size, fused.hidden_size, **kwargs)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(step, name).copy_(getattr(fused, f"{name}_l{layer}"))
        cells.append(step)
    return cells


def forward_flops_per_sequence(cell: str, input_size: int, hidden_size: int,
                               num_layers: int, seq_len: int) -> int:
    """Multiply-add FLOPs of the recurrent layers for one sequence (docs/experiments.md)."""
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    total, in_size = 0, input_size
    for _ in range(num_layers):
        total += 2 * gates * hidden_size * (in_size + hidden_size)
        in_size = hidden_size
    return total * seq_len
