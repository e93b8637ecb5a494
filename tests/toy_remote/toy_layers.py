"""Building block of the toy model, in its own sibling file to prove that ``from .toy_layers import`` travels."""

import torch
from torch import nn


class ToyBlock(nn.Module):
    """Pre-norm residual MLP: x + W2 · tanh(W1 · LN(x))."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.up = nn.Linear(hidden_size, 2 * hidden_size)
        self.down = nn.Linear(2 * hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (batch, seq, hidden)
        return hidden + self.down(torch.tanh(self.up(self.norm(hidden))))
