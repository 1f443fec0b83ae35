"""The recurrent models that tools/train.py trains and tools/export.py exports.

One recurrent layer stack (LSTM, GRU or plain tanh RNN, batch-first) and a
linear head applied at every step. The state is explicit on both sides,
``forward(x, h0[, c0]) -> (y, h_n[, c_n])``, so the exported ONNX graph has
state inputs and outputs and can be streamed by any runtime.
"""
from __future__ import annotations

import torch
from torch import nn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class SequenceModel(nn.Module):
    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, output_size: int = 1):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell '{cell}'; choose one of {', '.join(CELLS)}")
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.rnn = CELLS[cell](input_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, output_size)

    @property
    def has_cell_state(self) -> bool:
        return self.cell == "lstm"

    def initial_state(self, batch: int, device=None) -> tuple[torch.Tensor, ...]:
        shape = (self.num_layers, batch, self.hidden_size)
        zeros = torch.zeros(shape, device=device)
        return (zeros, zeros.clone()) if self.has_cell_state else (zeros,)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor | None = None):
        if self.has_cell_state:
            out, (h_n, c_n) = self.rnn(x, (h0, c0))
            return self.head(out), h_n, c_n
        out, h_n = self.rnn(x, h0)
        return self.head(out), h_n


def state_names(cell: str) -> tuple[list[str], list[str]]:
    """ONNX names of the state inputs and of the state outputs, pairwise."""
    if cell == "lstm":
        return ["h0", "c0"], ["h_n", "c_n"]
    return ["h0"], ["h_n"]
