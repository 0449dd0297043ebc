"""Forward FLOPs of any model, counted by PyTorch where it can, by formula where it cannot.

``torch.utils.flop_counter.FlopCounterMode`` counts the matrix products a model's forward
dispatches, whatever the model. Some fused recurrent kernels (oneDNN's LSTM on CPU,
cuDNN's RNNs on CUDA) are single ops it has no formula for, so it counts nothing inside
them; those layers get the textbook formula instead (docs/experiments.md, "Reference
arithmetic"), and the result says which source it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.hooks import RemovableHandle

COUNTER, FORMULA, MIXED = "flop_counter", "formula", "flop_counter+formula"
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@dataclass(frozen=True)
class FlopCount:
    per_sequence: int  # forward FLOPs (a multiply-add counts 2) for one sequence
    source: str  # COUNTER, FORMULA or MIXED


def forward_flops(model: nn.Module, input_size: int, seq_len: int,
                  device: torch.device) -> FlopCount:
    """Counts one forward pass over a single sequence of ``seq_len`` steps; recurrent
    models cost the same per sequence at any batch size."""
    probe = torch.zeros(1, seq_len, input_size, device=device)
    counter = FlopCounterMode(display=False)
    missed: list[int] = []
    hooks = [_watch(module, counter, missed) for module in model.modules()
             if isinstance(module, nn.RNNBase)]
    try:
        with torch.no_grad(), counter:
            model(probe)
    finally:
        for pre, post in hooks:
            pre.remove()
            post.remove()
    counted = counter.get_total_flops()
    total = counted + sum(missed)
    if not missed:
        return FlopCount(total, COUNTER)
    return FlopCount(total, MIXED if counted else FORMULA)


def _watch(module: nn.RNNBase, counter: FlopCounterMode,
           missed: list[int]) -> tuple[RemovableHandle, RemovableHandle]:
    """Hooks that notice when the counter saw nothing inside a recurrent layer."""
    before: list[int] = []

    def pre(mod: nn.RNNBase, args: tuple[Any, ...]) -> None:
        before.append(counter.get_total_flops())

    def post(mod: nn.RNNBase, args: tuple[Any, ...], output: object) -> None:
        if counter.get_total_flops() == before.pop():
            missed.append(rnn_layer_flops(mod, args[0]))

    return module.register_forward_pre_hook(pre), module.register_forward_hook(post)


def rnn_layer_flops(module: nn.RNNBase, x: torch.Tensor) -> int:
    """The formula for a library recurrent layer over input ``x``: per layer, direction
    and timestep, ``2 * gates * H * (I + H)``."""
    if x.dim() == 2:
        batch, steps = 1, x.shape[0]
    elif module.batch_first:
        batch, steps = x.shape[0], x.shape[1]
    else:
        steps, batch = x.shape[0], x.shape[1]
    directions = 2 if module.bidirectional else 1
    hidden, in_size, total = module.hidden_size, module.input_size, 0
    out = module.proj_size or hidden
    for _ in range(module.num_layers):
        total += directions * 2 * GATES[module.mode] * hidden * (in_size + out)
        if module.proj_size:
            total += directions * 2 * hidden * module.proj_size
        in_size = out * directions
    return total * steps * batch
