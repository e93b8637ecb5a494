"""The planner–executor's copy heads (SPEC P1–P3): a pointer-generator over tokens the model has read.

A text concept IS a text token (``text_concept_types``), so it may be written by pointing at it instead of being
found in the vocabulary. ``executor_copy``: the executor points at its plan's text-concept slots while writing y;
``planner_copy``: the planner points at u's tokens while writing a text concept type's plan. At each output
position t (See et al., 2017, "Get To The Point")

    a_t = softmax_j(q(h_t) · k_j / √d)                    over the copyable slots j
    g_t = σ(w · [h_t; Σ_j a_tj k_j])                      how much of the step is generated
    p(v) = g_t · softmax(logits_t)(v) + (1 − g_t) · Σ_j a_tj [token_j = v]

with h_t the stack's hidden state at t, k_j its hidden state at slot j and logits_t its own output layer's. The
head returns log p, which a cross-entropy and a ``LogitsProcessorList`` take like logits. Rows with nothing to
copy generate only.
"""

from __future__ import annotations

import math

from typing import NamedTuple

import torch
from torch import nn

NOT_COPYABLE = -1  # the token of a prefix position that cannot be copied (BOS, SEP, <mask>, another type's slot)


class CopySlots(NamedTuple):
    """What the head points at, prepared once per prefix (``PointerGeneratorHead.slots``)."""

    keys: torch.Tensor  # (batch, P, h) the slots' states through the query map, over √h
    values: torch.Tensor  # (batch, P, h) the slots' states
    bias: torch.Tensor  # (batch, 1, P) 0 on a copyable slot, the dtype's min elsewhere
    tokens: torch.Tensor  # (batch, 1, P) each slot's token (0 where not copyable: it gets no mass)
    any: torch.Tensor  # (batch, 1, 1) True where the row has something to copy


class PointerGeneratorHead(nn.Module):
    """Mixes a stack's output distribution with a copy distribution over the tokens of the slots it reads."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size, bias=False)
        self.gate = nn.Linear(2 * hidden_size, 1)

    def slots(self, slot_hidden: torch.Tensor, slot_tokens: torch.Tensor) -> CopySlots:
        """slot_hidden (batch, P, h) and slot_tokens (batch, P) (``NOT_COPYABLE`` where a slot is not a text
        concept) → the per-prefix half of the head, computed once for every decoding step. q(h)·k = h·(Wᵀk)."""
        copyable = slot_tokens != NOT_COPYABLE
        keys = (slot_hidden @ self.query.weight) / math.sqrt(slot_hidden.shape[-1])
        bias = torch.zeros_like(slot_tokens, dtype=slot_hidden.dtype).masked_fill(
            ~copyable, torch.finfo(slot_hidden.dtype).min)
        return CopySlots(keys, slot_hidden, bias[:, None], slot_tokens.clamp(min=0)[:, None],
                         copyable.any(1)[:, None, None])

    def forward(self, logits: torch.Tensor, hidden: torch.Tensor, slots: CopySlots) -> torch.Tensor:
        """logits (batch, t, vocab) of the output layer and hidden (batch, t, h) → log p (batch, t, vocab)."""
        attention = (hidden @ slots.keys.transpose(1, 2) + slots.bias).softmax(-1)  # (batch, t, P)
        attention = attention * (slots.bias == 0)  # rows with nothing to copy: all 0
        generate = torch.sigmoid(self.gate(torch.cat([hidden, attention @ slots.values], -1)))  # (batch, t, 1)
        generate = generate.masked_fill(~slots.any, 1.0)
        p = (generate * logits.softmax(-1)).scatter_add_(
            -1, slots.tokens.expand(-1, hidden.shape[1], -1), ((1 - generate) * attention).to(logits.dtype))
        return p.clamp_(min=torch.finfo(p.dtype).tiny).log_()
