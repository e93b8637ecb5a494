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

With ``checklist`` the head also knows which slots' tokens the text has already written (a neural checklist,
Kiddon et al., 2016, "Globally Coherent Text Generation with Neural Checklist Models"): w_t,j = 1 when token_j
occurs in x_<t. A written slot's copy score gets a learned term b · w_t,j, and the stack's state gets what is still
to be written before its output layer and the gate read it,

    h'_t = h_t + W [mean_{j: w_t,j = 0} k_j ; share of the slots not yet written]          (W starts at 0)

so the model can tell "every keyword written, stop" from "keywords left", which a small stack does not learn by
comparing tokens through attention (it ends early or writes a keyword twice and skips another).
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
    nothing: torch.Tensor  # (batch, 1, 1) True where the row has nothing to copy


def slot_matches(tokens: torch.Tensor, slots: CopySlots) -> torch.Tensor:
    """tokens (batch, t) → (batch, t, P): True at [i, j] when slot j is copyable and holds token i."""
    return (tokens[:, :, None] == slots.tokens) & (slots.bias == 0)


def written_slots(text_ids: torch.Tensor, slots: CopySlots) -> torch.Tensor:
    """text_ids (batch, t) of a teacher-forced text → (batch, t, P): True at [i, j] when slot j is copyable and
    its token occurs in text_ids[:, :i] (the text read by the position that predicts token i)."""
    seen = slot_matches(text_ids, slots).cummax(1).values  # token i or one before it is slot j's
    return torch.cat([torch.zeros_like(seen[:, :1]), seen[:, :-1]], 1)


def write(written: torch.Tensor, token: torch.Tensor, slots: CopySlots) -> torch.Tensor:
    """One decoding step: written (batch, 1, P) and the token just chosen (batch,) → written with its slots."""
    return written | slot_matches(token[:, None], slots)


class Checklist(nn.Module):
    """What of the plan is still to be written, as an update of the stack's state (zero at initialisation)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.update = nn.Linear(hidden_size + 1, hidden_size)  # zero at initialisation (the model's _init_weights)
        self.written_score = nn.Parameter(torch.zeros(()))  # b: added to the copy score of a written slot

    def forward(self, slots: CopySlots, written: torch.Tensor) -> torch.Tensor:
        """written (batch, t, P) → the update of the states (batch, t, h)."""
        copyable = (slots.bias == 0).to(slots.values.dtype)  # (batch, 1, P)
        left = copyable * (~written).to(copyable.dtype)  # (batch, t, P)
        count = left.sum(-1, keepdim=True)
        state = (left @ slots.values) / count.clamp(min=1)  # (batch, t, h)
        share = count / copyable.sum(-1, keepdim=True).clamp(min=1)
        return self.update(torch.cat([state, share], -1))


class PointerGeneratorHead(nn.Module):
    """Mixes a stack's output distribution with a copy distribution over the tokens of the slots it reads."""

    def __init__(self, hidden_size: int, checklist: bool = False):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size, bias=False)
        self.gate = nn.Linear(2 * hidden_size, 1)
        self.checklist = Checklist(hidden_size) if checklist else None

    def slots(self, slot_hidden: torch.Tensor, slot_tokens: torch.Tensor) -> CopySlots:
        """slot_hidden (batch, P, h) and slot_tokens (batch, P) (``NOT_COPYABLE`` where a slot is not a text
        concept) → the per-prefix half of the head, computed once for every decoding step. q(h)·k = h·(Wᵀk)."""
        copyable = slot_tokens != NOT_COPYABLE
        keys = (slot_hidden @ self.query.weight) / math.sqrt(slot_hidden.shape[-1])
        bias = torch.zeros_like(slot_tokens, dtype=slot_hidden.dtype).masked_fill(
            ~copyable, torch.finfo(slot_hidden.dtype).min)
        return CopySlots(keys, slot_hidden, bias[:, None], slot_tokens.clamp(min=0)[:, None],
                         ~copyable.any(1)[:, None, None])

    def forward(self, logits: torch.Tensor, hidden: torch.Tensor, slots: CopySlots,
                written: torch.Tensor | None = None) -> torch.Tensor:
        """logits (batch, t, vocab) of the output layer and hidden (batch, t, h) → log p (batch, t, vocab);
        ``written`` (batch, t, P) with a checklist (hidden then already holds its update)."""
        scores = hidden @ slots.keys.transpose(1, 2) + slots.bias  # (batch, t, P)
        if self.checklist is not None:
            scores = scores + self.checklist.written_score * written
        attention = scores.softmax(-1)  # 0 on the slots that are not copyable (score: the dtype's min)
        generate = torch.sigmoid(self.gate(torch.cat([hidden, attention @ slots.values], -1)))  # (batch, t, 1)
        generate = generate.masked_fill(slots.nothing, 1.0)  # such a row's attention is spread, and gets no mass
        p = (generate * logits.softmax(-1)).scatter_add_(
            -1, slots.tokens.expand(-1, hidden.shape[1], -1), ((1 - generate) * attention).to(logits.dtype))
        return p.clamp_(min=torch.finfo(p.dtype).tiny).log_()
