"""Attention masks as mask functions: one definition per rule, given to eager, sdpa or flex attention (SPEC M5, C4, P1–P2).

A mask function follows transformers' ``masking_utils`` convention: ``fn(batch_idx, head_idx, q_idx, kv_idx)``
says whether the query at absolute index ``q_idx`` may attend the key at ``kv_idx``; rules compose with
``and_masks`` / ``or_masks``. ``attention_mask(fn, ...)`` turns one into what the model's attention backend takes:
a boolean (batch, 1, q, kv) tensor for sdpa, an additive float one for eager, a ``BlockMask`` for flex attention.
Every rule here leaves each query at least one key (padding rows see themselves where needed), so the boolean
form never yields an all-masked row.

This file travels with the MERGE, concept and planner checkpoints (imported as ``from .masking import …``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import create_block_mask
from transformers.masking_utils import and_masks, causal_mask_function, or_masks, padding_mask_function

MaskFunction = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def sees_itself(batch_idx: Tensor, head_idx: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    """Every query sees its own key (queries and keys share indices)."""
    return q_idx == kv_idx


# -- the rules ---------------------------------------------------------------------------------------------------
def bidirectional_padding_rule(valid: Tensor) -> MaskFunction:
    """M5 (MERGE's filler E and gap encoder): every real key, in both directions. valid (batch, n)."""
    return padding_mask_function(valid)


def causal_padding_rule(valid: Tensor) -> MaskFunction:
    """Causal over the keys, padding keys hidden, every row sees itself (C3 shallow/middle; the P2 executor).
    valid (batch, kv)."""
    return or_masks(and_masks(causal_mask_function, padding_mask_function(valid)), sees_itself)


def concept_deep_rule(concept_time: Tensor, concept_valid: Tensor, is_concept: Tensor, token_valid: Tensor) -> MaskFunction:
    """C4 over [concept rows (M) ; token rows (T)], from 1-D ids.

    seg = cumsum(is_concept) is a token query's segment; a token key's is seg − is_concept, so token j sees token i
    iff i ≤ j and no concept lies in [i, j] (the tail τ(j) < i ≤ j). Concept keys are seen by any row at a later or
    equal time; concept queries never see tokens. Every row sees itself.
    concept_time, concept_valid (batch, M); is_concept, token_valid (batch, T).
    """
    batch, length = is_concept.shape
    width = concept_time.shape[1]
    time = torch.cat([concept_time, torch.arange(length, device=is_concept.device).expand(batch, length)], 1)
    row_is_concept = torch.cat([torch.ones_like(concept_valid), torch.zeros_like(token_valid)], 1)  # (batch, M + T)
    valid = torch.cat([concept_valid, token_valid], 1)
    seg = is_concept.long().cumsum(1)
    query_seg = torch.cat([seg.new_full((batch, width), -1), seg], 1)
    key_seg = torch.cat([seg.new_full((batch, width), -2), seg - is_concept.long()], 1)

    def rule(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        same_tail = ~row_is_concept[b, q] & (key_seg[b, kv] == query_seg[b, q])
        return (time[b, kv] <= time[b, q]) & valid[b, kv] & (row_is_concept[b, kv] | same_tail)

    return or_masks(rule, sees_itself)


def cache_step_rule(write_at: Tensor, include_new: Tensor | None = None) -> MaskFunction:
    """One new token per row written at slot ``write_at`` (batch,) of a ragged cache: it sees the row's older
    entries, and itself where ``include_new`` (batch,) bool (C8 decoding)."""

    def rule(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        own = kv == write_at[b]
        if include_new is not None:
            own = own & include_new[b]
        return (kv < write_at[b]) | own

    return rule


def planner_rule(key_valid: Tensor, key_type: Tensor, text_type: int) -> MaskFunction:
    """P1 (v3.1 parallel types): u is causal; a concept segment sees u and the earlier tokens of its own type.

    key_valid (batch, kv), key_type (kv,): the type of every key; the queries are the last keys, so a query's type
    is its key's. A padding query sees itself.
    """

    def rule(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        q_type = key_type[q]
        same_type = (key_type[kv] == q_type) & (kv <= q)
        sees_u = (key_type[kv] == text_type) & (q_type != text_type)
        return key_valid[b, kv] & (same_type | sees_u)

    return or_masks(rule, sees_itself)


# -- one rule, each backend's form ---------------------------------------------------------------------------------
def dense_mask(rule: MaskFunction, batch: int, q_len: int, kv_len: int, device) -> Tensor:
    """(batch, 1, q_len, kv_len) bool: ``rule`` on broadcast index grids; the queries are the last q_len keys."""
    b = torch.arange(batch, device=device)[:, None, None, None]
    h = torch.zeros(1, dtype=torch.long, device=device)[None, :, None, None]
    q = torch.arange(kv_len - q_len, kv_len, device=device)[None, None, :, None]
    kv = torch.arange(kv_len, device=device)[None, None, None, :]
    return rule(b, h, q, kv).expand(batch, 1, q_len, kv_len)


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask as the additive bias eager attention adds to the scores (0 or the dtype's minimum)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def attention_mask(rule: MaskFunction, batch: int, q_len: int, kv_len: int, *, implementation: str,
                   dtype: torch.dtype, device):
    """What the ``implementation`` backend takes for ``rule``: a ``BlockMask`` (flex_attention), a boolean mask
    (sdpa) or an additive one (eager and any other backend)."""
    if implementation == "flex_attention":
        offset = kv_len - q_len

        def shifted(b, h, q, kv):  # flex numbers queries from 0
            return rule(b, h, q + offset, kv)

        return create_block_mask(shifted, batch, None, q_len, kv_len, device=device)
    allowed = dense_mask(rule, batch, q_len, kv_len, device)
    return allowed if implementation == "sdpa" else additive_mask(allowed, dtype)
