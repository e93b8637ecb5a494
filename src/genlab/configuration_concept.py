"""Configuration of online concept compression (SPEC C1, C2, C6, C7): a ``Qwen2Config`` plus what v2 adds.

The backbone is an unchanged Qwen2 decoder; this config only says how its layers are split (shallow /
middle / deep, C1), how large the concept vocabulary is (C2), how the number of concepts is controlled
(C7: target rate and the longest run of ``<NULL>``), the Gumbel temperature schedule, and the LoRA
settings used on the frozen backbone (C6). Travels with checkpoints (imports only transformers/hf_hub).
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import Qwen2Config

CONCEPT_FIELDS = ("num_shallow_layers", "num_middle_layers", "num_deep_layers", "concept_vocab_size",
                  "target_compression_ratio", "max_null_run", "firing", "gumbel_tau_start", "gumbel_tau_end",
                  "gumbel_anneal_steps", "ratio_loss_weight", "lora_r", "lora_alpha", "lora_dropout",
                  "lora_target_modules")
FIRING_RULES = ("threshold", "sampled")
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@strict
class Qwen2ConceptCompressionConfig(Qwen2Config):
    r"""Qwen2 with concept-compressed middle blocks.

    Args (beyond ``Qwen2Config``):
        num_shallow_layers / num_middle_layers / num_deep_layers: the C1 split; must sum to
            ``num_hidden_layers``. Left unset: a quarter / half / quarter split.
        concept_vocab_size: number of concept ids (C2); id ``concept_vocab_size`` is ``<NULL>``.
        target_compression_ratio: the wanted fraction of tokens that become concepts, r in (0, 1]; the
            ``<NULL>`` bias of the ConceptHead is initialised so that P(concept) = r (C7).
        max_null_run: the longest allowed run of consecutive ``<NULL>``; the next token is forced to be a
            concept (a forced boundary bounds the tail, C7). ``None``: ``round(2 / r) - 1``.
        firing: how a token becomes a concept, the same rule in training, evaluation and decoding.
            ``"threshold"`` (default): fire iff P(not ``<NULL>``) > ½, with a straight-through gradient; Gumbel
            noise (training only) picks only WHICH concept id fires; the rate loss acts on the hard decisions.
            ``"sampled"`` (ablation, the first release's rule): training samples fire/no-fire with Gumbel-max
            over the K + 1 classes, inference fires iff P > ½ — the two regimes fire at different rates.
        gumbel_tau_start / gumbel_tau_end / gumbel_anneal_steps: exponential temperature schedule of the
            Gumbel-softmax (a pure function of the global step, see ``gumbel_temperature``).
        ratio_loss_weight: weight of the rate loss (C7). ``threshold``: H-Net's ratio loss on the hard decisions,
            N/(N−1)·((N−1)·F·G + (1−F)·(1−G)) with N = 1/r, F the fraction of tokens that became concepts and G
            the mean P(not ``<NULL>``) (its minimum is at F = G = r). ``sampled``: (G − r)².
        lora_r / lora_alpha / lora_dropout / lora_target_modules: peft LoRA on the frozen backbone (C6).
    """

    model_type = "qwen2_concept"

    num_shallow_layers: int | None = None
    num_middle_layers: int | None = None
    num_deep_layers: int | None = None
    concept_vocab_size: int = 4096
    target_compression_ratio: float = 0.25
    max_null_run: int | None = None
    firing: str = "threshold"
    gumbel_tau_start: float = 1.0
    gumbel_tau_end: float = 0.1
    gumbel_anneal_steps: int = 2000
    ratio_loss_weight: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._fill_layer_split()
        if not 0 < self.target_compression_ratio <= 1:
            raise ValueError(f"target_compression_ratio must be in (0, 1], got {self.target_compression_ratio}")
        if self.max_null_run is None:
            self.max_null_run = max(0, round(2 / self.target_compression_ratio) - 1)
        if self.max_null_run < 0:
            raise ValueError(f"max_null_run must be >= 0, got {self.max_null_run}")
        if self.firing not in FIRING_RULES:
            raise ValueError(f"firing must be one of {list(FIRING_RULES)}, got {self.firing!r}")
        if self.concept_vocab_size < 1:
            raise ValueError(f"concept_vocab_size must be >= 1, got {self.concept_vocab_size}")
        if not (self.gumbel_tau_start > 0 and self.gumbel_tau_end > 0):
            raise ValueError(f"gumbel_tau_start and gumbel_tau_end must be > 0, got "
                             f"{self.gumbel_tau_start} and {self.gumbel_tau_end}")
        if self.lora_target_modules is None:
            self.lora_target_modules = list(DEFAULT_LORA_TARGETS)

    def _fill_layer_split(self) -> None:
        split = (self.num_shallow_layers, self.num_middle_layers, self.num_deep_layers)
        n = self.num_hidden_layers
        if all(count is None for count in split):
            shallow = max(1, n // 4)
            deep = max(1, n // 4) if n > 2 else n - shallow
            split = (shallow, n - shallow - deep, deep)
        if any(count is None or count < 0 for count in split) or sum(split) != n:
            raise ValueError(
                "num_shallow_layers + num_middle_layers + num_deep_layers must be non-negative and sum to "
                f"num_hidden_layers={n}, got {split}")
        if split[0] < 1 or split[2] < 1:
            raise ValueError(f"num_shallow_layers and num_deep_layers must be >= 1, got {split}")
        self.num_shallow_layers, self.num_middle_layers, self.num_deep_layers = split

    def concept_fields(self) -> dict:
        """The fields this config adds to ``Qwen2Config`` (what ``from_base_pretrained`` takes)."""
        return {name: getattr(self, name) for name in CONCEPT_FIELDS}

    @property
    def null_id(self) -> int:
        """The id of ``<NULL>`` in the ConceptHead's output (the last one)."""
        return self.concept_vocab_size

    def null_bias(self, logit_variance: float = 0.0) -> float:
        """``<NULL>`` logit at init (C7 calibration; SPEC Pitfalls).

        With K concept logits ~ N(0, s²), E[sum_k exp(l_k)] = K·exp(s²/2), so P(<NULL>) = 1 - r needs
        b = log K + s²/2 + log((1 - r) / r). ``sampled`` firing starts at P(concept) = r. ``threshold`` firing
        starts at P(concept) = ½, on the decision boundary, so about half the tokens fire at first and the rate
        loss moves the boundary to r (started at P = r < ½ nothing would fire and the loss would crawl).
        r = 1 (every token a concept) gives a very low bias.
        """
        r = 0.5 if self.firing == "threshold" else self.target_compression_ratio
        if r >= 1:
            return -30.0
        return math.log(self.concept_vocab_size) + logit_variance / 2 + math.log1p(-r) - math.log(r)


def gumbel_temperature(config: Qwen2ConceptCompressionConfig, step: int) -> float:
    """tau(step): exponential from ``gumbel_tau_start`` to ``gumbel_tau_end`` over ``gumbel_anneal_steps``."""
    progress = min(1.0, max(0, step) / max(1, config.gumbel_anneal_steps))
    return config.gumbel_tau_start * (config.gumbel_tau_end / config.gumbel_tau_start) ** progress


__all__ = ["FIRING_RULES", "Qwen2ConceptCompressionConfig", "gumbel_temperature"]
