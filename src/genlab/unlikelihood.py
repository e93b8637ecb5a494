"""Token-level unlikelihood (Welleck et al., 2019, "Neural Text Generation with Unlikelihood Training").

Cross-entropy alone trains a model to put mass on the right token; it never says that writing a token it has
already written is wrong, and greedy decoding of a small model then loops ("班机班机班机…"). At each position t
of a teacher-forced sequence the unlikelihood term pushes down the tokens written before t:

    L_UL(t) = − Σ_{c ∈ C_t} log(1 − p(c | x_<t)),    C_t = {x_1 … x_{t−1}} \\ {x_t}

(each earlier token once; the target itself is never a candidate). The planner–executor adds
``unlikelihood_weight`` × the mean of L_UL over the trained positions of its text and of its text-concept plans
(SPEC P3/P4), whose targets never repeat a token by construction (the keywords proposer keeps first occurrences).
"""

from __future__ import annotations

import torch


def token_unlikelihood(log_probs: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """log_probs (batch, T, V) of teacher-forced positions and their labels (batch, T) → L_UL per position
    (batch, T), 0 where the label is ``ignore_index``. Candidates are the labels at earlier positions."""
    t = labels.shape[1]
    valid = labels != ignore_index
    earlier = torch.ones(t, t, dtype=torch.bool, device=labels.device).tril(-1)  # [t, j]: j < t
    same = labels[:, :, None] == labels[:, None, :]  # (batch, T, T) [t, j]: label_t == label_j
    first = ~(same & earlier).any(-1)  # (batch, T): no earlier position holds the same label
    candidate = earlier & (valid & first)[:, None, :] & ~same & valid[:, :, None]  # (batch, T, T)
    p = log_probs.gather(-1, labels.clamp(min=0)[:, None, :].expand(-1, t, -1)).exp()  # [t, j]: p(label_j at t)
    penalty = -torch.log1p(-p.clamp(max=1 - 1e-5))
    return (penalty * candidate).sum(-1)
