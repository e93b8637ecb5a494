"""Straight-through estimators: hard discrete forward values, gradients through a soft relaxation.

One small function per op; each docstring states the forward value and the gradient path. Every
genlab system takes its discrete choices from here:

- MERGE M1 Gate: ``gumbel_sigmoid_st`` (hard Edit/Generate gate, tau annealed 2 -> 0.2).
- MERGE M2 Mask-Picker: ``soft_deletion_weights`` (p_del mixed in at the embedding layer) and
  ``bottomk_st`` (hard Bottom-K deletion); variant ``picker="bernoulli"``: ``bernoulli_st`` on p_keep.
- MERGE M3 Mask-Inserter: ``multinomial_st`` (hard mask counts per gap, summing to K_ins);
  variant ``inserter="pointer"``: ``differentiable_topk``.
- Concept C2 ConceptHead: ``gumbel_softmax_st`` over the concept ids + ``<NULL>``; ConceptEmbedding's
  e = e_hard + (e_soft - stopgrad(e_soft)) is ``straight_through(e_hard, e_soft)``.
- Planner P4 straight-through and soft-mixture paths: ``gumbel_softmax_pair`` (hard sample and its relaxation).

Conventions shared by all ops:
- Outputs have the input's dtype and shape; hard values are exact (0/1, or integer counts) because
  ``straight_through`` adds an exact zero to them. Relaxations run in float32 for half/bfloat16 inputs.
- ``tau > 0`` may be tiny (1e-6) and logits as large as +-1e4: nothing overflows into NaN/inf (saturated
  relaxations simply give zero gradient).
- ``noise=False`` is the deterministic inference mode; ``generator`` (on the inputs' device) makes the
  noise reproducible.
- Row ops act on the last dim. ``k`` is an int or a LongTensor of shape ``scores.shape[:-1]`` (one k per
  row); ``valid_mask`` (bool, same shape as the scores) marks real positions — padding is never selected.

This file travels with checkpoints as remote code: it imports only torch and the standard library.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "straight_through",
    "gumbel_sigmoid_st",
    "gumbel_softmax_pair",
    "gumbel_softmax_st",
    "soft_deletion_weights",
    "bottomk_st",
    "multinomial_st",
    "bernoulli_st",
    "differentiable_topk",
]


# -- shared helpers ----------------------------------------------------------------------------------------------
def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """The straight-through trick, written once: hard + (soft - stopgrad(soft)).

    Forward: exactly ``hard`` (soft - soft.detach() is an exact 0, so no rounding leaks into it).
    Gradient: that of ``soft`` (plus ``hard``'s own, if it has one — e.g. an embedding lookup in C2).
    """
    return hard + (soft - soft.detach())


def _check_tau(tau: float | Tensor) -> None:
    # A tensor tau is not checked: that would cost a host sync on every call.
    if not isinstance(tau, Tensor) and not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")


def _upcast(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32 (where logits/tau cannot overflow); other dtypes unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _uniform(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """U(0, 1) noise shaped like ``like``, clamped to [tiny, 1) so log(u) and log(1 - u) stay finite."""
    u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    finfo = torch.finfo(like.dtype)
    return u.clamp(finfo.tiny, 1.0 - finfo.eps / 2)


def _valid_mask(valid_mask: Tensor | None, scores: Tensor) -> Tensor:
    if valid_mask is None:
        return torch.ones_like(scores, dtype=torch.bool)
    if valid_mask.shape != scores.shape:
        raise ValueError(f"valid_mask must have the scores' shape {tuple(scores.shape)}, got {tuple(valid_mask.shape)}")
    return valid_mask.to(device=scores.device, dtype=torch.bool)


def _per_row_k(k: int | Tensor, batch_shape: torch.Size, device: torch.device) -> Tensor:
    """k as a LongTensor of shape ``batch_shape``; negative tensor entries count as 0."""
    if not isinstance(k, Tensor):
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        return torch.full(batch_shape, int(k), dtype=torch.long, device=device)
    if k.dtype.is_floating_point or k.dtype.is_complex:
        raise TypeError(f"k must be an int or an integer tensor, got dtype {k.dtype}")
    if k.dim() != 0 and k.shape != batch_shape:
        raise ValueError(
            f"k must be an int or a tensor of shape {tuple(batch_shape)} (one per row), got {tuple(k.shape)}"
        )
    return k.to(device=device, dtype=torch.long).clamp(min=0).expand(batch_shape)


def _masked_softmax(z: Tensor, valid: Tensor) -> Tensor:
    """softmax over the last dim restricted to valid entries; a row with none valid gives zeros (not NaN)."""
    z = z.masked_fill(~valid, torch.finfo(z.dtype).min)
    return torch.softmax(z, dim=-1).masked_fill(~valid, 0.0)


# -- M1 gate, C2 / P4 concept choice ----------------------------------------------------------------------------
def gumbel_sigmoid_st(
    logits: Tensor, tau: float | Tensor, *, noise: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """Hard 0/1 gate per element (MERGE M1): 1 where logits + logistic noise > 0 (noise=False: logits > 0).

    Forward: {0, 1} in logits' dtype and shape.
    Gradient: of sigmoid((logits + noise) / tau), the binary-concrete relaxation (same noise sample).
    """
    _check_tau(tau)
    z = _upcast(logits)
    if noise:
        u = _uniform(z, generator)
        z = z + (torch.log(u) - torch.log1p(-u))  # logistic noise = difference of two Gumbels
    hard = (z > 0).to(z.dtype)
    soft = torch.sigmoid(z / tau)
    return straight_through(hard, soft).to(logits.dtype)


def gumbel_softmax_pair(
    logits: Tensor,
    tau: float | Tensor,
    dim: int = -1,
    *,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """(hard, soft) from ONE Gumbel sample g: hard = one-hot of argmax(logits + g) along ``dim`` (noise=False:
    argmax(logits); ties -> first), soft = softmax((logits + g) / tau, dim), both float32 for half inputs.

    For a caller that reads the relaxation itself (the planner's soft mixture, P4); ``gumbel_softmax_st`` is
    ``straight_through(hard, soft)``. Gradient: soft's; hard has none.
    """
    # Not F.gumbel_softmax(hard=True): that takes no generator, has no noise-free mode, and can draw log(0).
    _check_tau(tau)
    z = _upcast(logits)
    if noise:
        z = z - torch.log(-torch.log(_uniform(z, generator)))  # Gumbel(0, 1) noise
    hard = torch.zeros_like(z).scatter_(dim, z.argmax(dim, keepdim=True), 1.0)
    return hard, torch.softmax(z / tau, dim=dim)


def gumbel_softmax_st(
    logits: Tensor,
    tau: float | Tensor,
    dim: int = -1,
    *,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One-hot of argmax(logits + Gumbel noise) along ``dim`` (noise=False: argmax(logits); ties -> first).

    Forward: one-hot rows in logits' dtype and shape.
    Gradient: of softmax((logits + noise) / tau, dim) with the same noise sample.
    """
    hard, soft = gumbel_softmax_pair(logits, tau, dim, noise=noise, generator=generator)
    return straight_through(hard, soft).to(logits.dtype)


# -- M2 mask picker ------------------------------------------------------------------------------------------------
def soft_deletion_weights(scores: Tensor, tau: float | Tensor) -> Tensor:
    """MERGE M2 soft deletion p_del = sigmoid(-scores / tau): low score -> likely deleted.

    Forward: p_del in (0, 1) (saturating to exact 0/1 for |scores| >> tau), scores' dtype and shape.
    Gradient: the plain sigmoid gradient (no straight-through; this is the soft path itself).
    """
    _check_tau(tau)
    return torch.sigmoid(-_upcast(scores) / tau).to(scores.dtype)


def bottomk_st(
    scores: Tensor, k: int | Tensor, tau: float | Tensor, *, valid_mask: Tensor | None = None
) -> Tensor:
    """Hard deletion mask (MERGE M2 Bottom-K): 1 at the k LOWEST valid scores of each row (last dim).

    Forward: exactly min(k, n_valid) ones per row, never on padding; ties go to the lower index.
    Gradient: of sigmoid((t - scores) / tau), t midway between the k-th and (k+1)-th lowest valid score
    (i.e. soft_deletion_weights centred at the Bottom-K cut rather than at 0).
    """
    return differentiable_topk(-scores, k, tau, valid_mask=valid_mask)


def bernoulli_st(
    probs: Tensor | None = None,
    *,
    logits: Tensor | None = None,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """0/1 sample with P(1) = p, p = probs or sigmoid(logits) (MERGE M2 picker="bernoulli", on p_keep).

    Forward: Bernoulli(p) sample in {0, 1} (noise=False: p > 0.5, i.e. logits > 0), input dtype and shape.
    Gradient: of p (d out / d probs = 1, d out / d logits = sigmoid').
    """
    if (probs is None) == (logits is None):
        raise ValueError("bernoulli_st takes exactly one of probs= or logits=")
    source = probs if probs is not None else logits
    p = _upcast(probs) if probs is not None else torch.sigmoid(_upcast(logits))
    if noise:
        hard = _uniform(p, generator) < p  # u in [tiny, 1): p = 0 never fires, p = 1 always does
    else:
        hard = logits > 0 if logits is not None else p > 0.5
    return straight_through(hard.to(p.dtype), p).to(source.dtype)


# -- M3 mask inserter ----------------------------------------------------------------------------------------------
def multinomial_st(
    logits: Tensor,
    k: int | Tensor,
    tau: float | Tensor,
    *,
    valid_mask: Tensor | None = None,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Hard counts per gap (MERGE M3): Multinomial(k, softmax(logits)) over the valid gaps of each row.

    Forward: integer-valued counts (logits' dtype), >= 0, 0 on padding, summing EXACTLY to k per row
    (noise=False: expected counts k·p rounded by largest remainder). A row with no valid gap gets 0.
    Gradient: of k · softmax(logits / tau) over the valid gaps.
    """
    _check_tau(tau)
    valid = _valid_mask(valid_mask, logits)
    z = _upcast(logits)
    k_rows = _per_row_k(k, logits.shape[:-1], logits.device)
    k_rows = torch.where(valid.any(dim=-1), k_rows, 0)  # (*batch,)
    probs = _masked_softmax(z.detach(), valid)  # (*batch, gaps)
    if noise:
        # torch.multinomial takes a Python draw count: one host sync per call, no loop over rows.
        max_k = int(k_rows.amax()) if k_rows.numel() else 0
        hard = _sample_counts(probs, k_rows, max_k, generator)
    else:
        hard = _largest_remainder_counts(probs, k_rows, valid)
    soft = k_rows.unsqueeze(-1) * _masked_softmax(z / tau, valid)
    return straight_through(hard.to(z.dtype), soft).to(logits.dtype)


def _sample_counts(probs: Tensor, k: Tensor, max_k: int, generator: torch.Generator | None) -> Tensor:
    """Multinomial(k_row, p_row) counts: max_k i.i.d. draws per row, of which the first k_row are kept."""
    rows = probs.reshape(-1, probs.shape[-1])  # (rows, gaps)
    counts = torch.zeros_like(rows)
    if max_k == 0 or rows.shape[0] == 0:
        return counts.reshape(probs.shape)
    rows = torch.where(rows.sum(-1, keepdim=True) > 0, rows, 1.0)  # rows with no valid gap (k = 0) still need mass
    draws = torch.multinomial(rows, max_k, replacement=True, generator=generator)  # (rows, max_k)
    kept = torch.arange(max_k, device=probs.device) < k.reshape(-1, 1)  # (rows, max_k)
    return counts.scatter_add_(-1, draws, kept.to(counts.dtype)).reshape(probs.shape)


def _largest_remainder_counts(probs: Tensor, k: Tensor, valid: Tensor) -> Tensor:
    """floor(k·p) plus one for the (k - sum floor) gaps with the largest remainders (ties -> lower index)."""
    expected = k.unsqueeze(-1).double() * probs.double()  # (*batch, gaps); float64 keeps sum(floor) <= k
    floor = expected.floor()
    missing = k - floor.sum(-1).long()  # (*batch,)
    remainder = (expected - floor).masked_fill(~valid, -1.0)
    order = remainder.argsort(dim=-1, descending=True, stable=True)
    gets_one = torch.arange(probs.shape[-1], device=probs.device) < missing.unsqueeze(-1)
    bonus = torch.zeros_like(floor).scatter_(-1, order, gets_one.to(floor.dtype))
    return (floor + bonus).to(probs.dtype)


def differentiable_topk(
    scores: Tensor, k: int | Tensor, tau: float | Tensor, *, valid_mask: Tensor | None = None
) -> Tensor:
    """Hard k-hot mask (MERGE M3 pointer inserter): 1 at the k HIGHEST valid scores of each row (last dim).

    Forward: exactly min(k, n_valid) ones per row, never on padding; ties go to the lower index.
    Gradient: of sigmoid((scores - t) / tau), t midway between the k-th and (k+1)-th highest valid score
    (the relaxation tends to the hard mask as tau -> 0; rows with k = 0 or k = n_valid get no gradient).
    """
    _check_tau(tau)
    valid = _valid_mask(valid_mask, scores)
    s = _upcast(scores)
    length = scores.shape[-1]
    n_valid = valid.sum(dim=-1)  # (*batch,)
    k_rows = torch.minimum(_per_row_k(k, scores.shape[:-1], scores.device), n_valid)
    finfo = torch.finfo(s.dtype)
    key = torch.where(valid, s.clamp(finfo.min, finfo.max), float("-inf"))  # padding sorts after any score
    sorted_key, order = key.sort(dim=-1, descending=True, stable=True)  # (*batch, length)
    chosen = torch.arange(length, device=scores.device) < k_rows.unsqueeze(-1)
    hard = torch.zeros_like(s).scatter_(-1, order, chosen.to(s.dtype))

    has_cut = ((k_rows > 0) & (k_rows < n_valid)).unsqueeze(-1)  # (*batch, 1)
    last_in = sorted_key.gather(-1, (k_rows - 1).clamp(min=0).unsqueeze(-1))  # k-th highest, (*batch, 1)
    first_out = sorted_key.gather(-1, k_rows.clamp(max=max(length - 1, 0)).unsqueeze(-1))  # (k+1)-th highest
    threshold = torch.where(has_cut, 0.5 * last_in + 0.5 * first_out, 0.0)  # halves first: no overflow
    soft = torch.where(valid & has_cut, torch.sigmoid((s - threshold) / tau), hard)
    return straight_through(hard, soft).to(scores.dtype)
