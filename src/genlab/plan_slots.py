"""What the slots of a typed concept plan (batch, types, L) hold (SPEC P1–P7): which are content, masking some
(the executor's z-dropout), and the planner's mean entropy over the slots it is trained on."""

from __future__ import annotations

import torch

from .configuration_planner import CONCEPT_EOS, CONCEPT_MASK, CONCEPT_PAD


def concept_slot_mask(concept_ids: torch.Tensor) -> torch.Tensor:
    """(batch, types, L) → True on the content slots: before the first ``<pad>``/``<eos>`` of each type."""
    content = (concept_ids != CONCEPT_PAD) & (concept_ids != CONCEPT_EOS)
    return content.long().cumprod(-1).bool()


def drop_concepts(concept_ids: torch.Tensor, p: float) -> torch.Tensor:
    """(batch, types, L) → the same plan with each concept replaced by ``<mask>`` with probability p."""
    dropped = concept_slot_mask(concept_ids) & (torch.rand(concept_ids.shape, device=concept_ids.device) < p)
    return concept_ids.masked_fill(dropped, CONCEPT_MASK)


def slot_entropy(logits: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Mean entropy, in nats, of the planner's distributions (batch, types, L + 1, vocab) over the ``counted``
    slots (those it is trained on: each concept and each type's ``<eos>``)."""
    log_p = logits[counted].float().log_softmax(-1)  # (slots, vocab)
    return -(log_p.exp() * log_p).sum(-1).mean()  # ids a type cannot emit have p = 0 exactly
