"""A user's own recurrent network, swept by rnnsweep beside its built-in LSTM.

IndRNN (Li et al., 2018): each hidden unit has its own scalar recurrent weight, so
``h_t = relu(W x_t + u * h_{t-1} + b)``. Written as a plain ``torch.nn.Module``; nothing
here knows about rnnsweep except the contract it follows: built from its config's keys
plus ``output_size``, input ``(batch, seq_len, input_size)``, output
``(batch, seq_len, output_size)`` first, then the hidden sequence.
"""

from __future__ import annotations

import torch
from torch import nn


class IndRNN(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, output_size: int,
                 num_layers: int = 1, max_recurrent: float = 1.0) -> None:
        super().__init__()
        sizes = [input_size] + [hidden_size] * num_layers
        self.inputs = nn.ModuleList(nn.Linear(a, b)
                                    for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        # Recurrent weights in (-max, max): |u| <= 1 keeps the recurrence from exploding.
        self.recurrent = nn.ParameterList(
            nn.Parameter(torch.empty(hidden_size).uniform_(-max_recurrent, max_recurrent))
            for _ in range(num_layers))
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for project, u in zip(self.inputs, self.recurrent, strict=True):
            drive = project(x)  # every timestep's input at once; only the recurrence loops
            h = drive.new_zeros(drive.shape[0], drive.shape[2])
            steps = []
            for t in range(drive.shape[1]):
                h = torch.relu(drive[:, t] + u * h)
                steps.append(h)
            x = torch.stack(steps, dim=1)
        return self.head(x), x
