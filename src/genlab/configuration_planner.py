"""Configuration of the concept-first planner–executor (SPEC P1–P8; seed 003 "v3: pure AR", "v3.1").

Concept ids are LOCAL to their type: every type's vocabulary starts with three specials — ``<pad>`` (0),
``<eos>`` (1), ``<mask>`` (2) — followed by ``concept_vocab_sizes[i]`` content concepts, so type ``i`` has
``concept_vocab_sizes[i] + 3`` ids. Planner and executor are Qwen2 stacks described by plain dicts of
``Qwen2Config`` fields (``hidden_size``, ``num_hidden_layers`` …); there is no dropout anywhere, so the
E-step's rollout and the M-step's replay of a plan see exactly the same function (SPEC Pitfalls).
"""

from __future__ import annotations

from transformers import PretrainedConfig, Qwen2Config

CONCEPT_PAD, CONCEPT_EOS, CONCEPT_MASK = 0, 1, 2
NUM_CONCEPT_SPECIALS = 3
CONCEPT_GRADIENTS = ("hard_em", "straight_through", "soft_mixture")
ESTEP_SOURCES = ("proposer", "planner_greedy", "planner_sample", "planner_beam", "previous", "input")
DEFAULT_ESTEP_SOURCES = ("proposer", "planner_greedy", "planner_sample", "previous")
PROPOSERS = ("rare_characters", "keywords", "learned")
ESTEP_SELECTIONS = ("joint", "likelihood")
ESTEP_WARMUP_ENDS = ("steps", "gain")

DEFAULT_STACK = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=352)
STACK_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size")


class PlannerExecutorConfig(PretrainedConfig):
    """Everything a :class:`PlannerExecutorModel` and its hard-EM trainer read.

    Args:
        vocab_size: text vocabulary (shared by the planner's input u and the executor's output x).
        concept_types: names of the concept types (P1), at least one.
        concept_vocab_sizes: content concepts per type (the 3 specials come on top).
        concept_max_lengths: longest concept sequence per type, ``<eos>`` excluded.
        max_input_length: longest u the planner accepts; max_text_length: longest text the executor writes.
        planner, executor: ``Qwen2Config`` fields of each stack (P1, P2). Both stacks share one hidden size
            (the straight-through path moves planner distributions onto executor embeddings).
        planner_mtp_heads: extra heads predicting concept t+1+d (d = 1…n) from position t (P5, v3.1).
        concept_gradient: how z is trained (P4). ``hard_em``: the E-step picks z* (below), the M-step trains the
            executor on (z*, y) and the planner on (u, z*). ``straight_through`` and ``soft_mixture`` REPLACE
            hard-EM (no E-step, no proposer, no planner loss): the planner writes its own full-length plan from u
            slot by slot (``relaxed_plan``; each slot's id fed back, sampled with Gumbel noise while training,
            argmax otherwise), the loss is −log p(y | z) and the planner learns through the executor's gradient.
            The executor reads, per slot, ``straight_through``: e_hard + e_soft − stopgrad(e_soft) (forward: the
            id's row, so evaluation and generation read the plain ids); ``soft_mixture``: e_soft itself, in
            training, evaluation and generation alike. e_soft = softmax((logits + g) / τ) · the executor's
            concept table, τ = ``concept_temperature``.
        concept_temperature: τ > 0 of those relaxations.
        estep_top_k: candidates scored per example in the E-step; estep_sources: where they come from
            (``proposer`` = from y, ``planner_greedy``, ``planner_sample``, ``planner_beam`` = ``estep_top_k``
            plans of a diverse beam search, ``previous`` = the cached z*, ``input`` = the keywords proposer's plan
            of u itself: every keyword of u, distractors included — a plan the planner can always predict).
        estep_diversity_penalty: λ of the ``planner_beam`` source: diverse beam search (Vijayakumar et al.) with
            ``estep_top_k`` groups of one beam each; a group's log-probabilities lose λ for every earlier group
            that chose the same concept at the same step (Hamming diversity), so the groups spread over plans.
        estep_refresh_steps: M, the age in steps after which an example's cached z* is searched again (v3.1).
        estep_warmup_steps: W. Before step W the E-step chooses among the proposer's plans only, and the prior
            term enters S(z) = log p(y|z) + β log p(z|u) with β = β_max · step / W (β_max from W on): a random
            planner's log p(z|u) would otherwise make the empty plan win before the executor has learnt to read z.
        executor_z_dropout: z-dropout, p in [0, 1). While training, each concept of z that the executor reads is
            replaced by its type's ``<mask>`` with probability p (the planner still learns the whole z*; the
            E-step's scoring is untouched): the executor learns to write y from partial plans, as the planner's own
            plans are at test time. ``hard_em`` only.
        planner_entropy_weight: λ ≥ 0; the M-step loss subtracts λ × the planner's mean entropy per trained slot (an
            entropy bonus: the planner's distribution is kept from locking onto one plan; 0 = off).
        estep_warmup_end: when the planner's plans join the E-step: ``steps`` at step W; ``gain`` at the first E-step
            from W on where the executor's gain from z* (log p(y|z*) − log p(y|shuffled z*), summed per example)
            exceeds the plan's prior cost (−log p(z*|u)) on average over the last ``estep_refresh_steps`` steps —
            a planner whose plans cost more nats than they save never competes, so it cannot lock in a cheap plan.
        estep_prior_weight: β_max, 1 as in P4. Below 1 the E-step trusts the executor's evidence more than the
            planner's prior, a guard against z* collapsing onto the planner's own plans (``bench planner`` notes).
        estep_selection: ``joint`` keeps argmax S(z); ``likelihood`` keeps argmax log p(y|z) with S(z) only as
            the tie-break, so a cheap plan the executor cannot use never beats an informative one on its prior.
        proposer: the q(z | y) of the E-step: ``rare_characters`` (y's rarest characters hashed into the
            keyword vocabulary, plus clause shapes), ``keywords`` (the characters y shares with u, un-hashed,
            in u's order: concept = text token) or ``learned`` (a small encoder over y whose slots each point at one
            of y's tokens — a discrete bottleneck trained with the executor and the planner as a discrete VAE, so no
            hand-made keywords are needed; every type must be a text concept type; its argmax plan is the
            proposer's candidate).
        posterior: ``Qwen2Config`` fields of the learned proposer's encoder (``proposer="learned"``; default one
            layer of the executor's width). posterior_kl_weight: weight of KL(q(z|y) ‖ p(z|u)) in its loss, in nats
            per text token like the reconstruction (1 = the ELBO). posterior_temperature: τ of its Gumbel-softmax
            straight-through samples.
        text_concept_types: types whose content concepts ARE text tokens (concept 3 + t stands for token t;
            their vocabulary size must equal ``vocab_size``): their rows are the planner's and the executor's
            text embeddings, and the planner scores them with its own text embeddings (tied, P1/P2).
        executor_copy: give the executor a pointer-generator head (``pointer_generator``): each text token is
            generated from the vocabulary or copied from one of the plan's text-concept slots, mixed by a learned
            gate, so a plan's keywords can be written by pointing at them. Needs ``text_concept_types``.
        executor_checklist: with ``executor_copy``, the head also reads which of the plan's text concepts the text
            written so far already holds (``pointer_generator``'s checklist): its copy scores and the executor's
            state learn "written" from "still to write" (against texts that end before every keyword is in).
        planner_copy: the same head on the planner: a text concept type's concept is generated from the table or
            copied from u's tokens (a keyword plan picks words of u by pointing at them).
        plan_separator_id: a text token (u's word separator "、" on the keywords task) that separates the words of
            a text-concept plan: the keywords proposer then plans u's words that y holds whole, in u's order,
            separator between (``KeywordProposer``), the executor's copy head and checklist ignore its slots, and
            ``plan(no_repeat_concepts=True)`` lets it repeat. None: plans are characters without word boundaries.
        unlikelihood_weight: α ≥ 0; the M-step adds α × the token-level unlikelihood (``unlikelihood``) of the
            executor's text and of the planner's text-concept plans: each position pushes down the tokens already
            written before it, against the loops greedy decoding falls into (0 = off).
        share_text_embeddings: one text embedding table for the planner's u and the executor's text (and so for
            every text concept), instead of one per stack.
        monitor_steps: N, steps between monitor readings (P6); monitor_batch_size: examples they use.
        position_buckets: left edges of the NLL-by-position buckets (P6 item 8).
    """

    model_type = "planner_executor"

    def __init__(self, vocab_size: int = 5420, pad_token_id: int = 0, bos_token_id: int = 2, eos_token_id: int = 3,
                 concept_types: list[str] | tuple[str, ...] = ("keywords", "shape"),
                 concept_vocab_sizes: list[int] | tuple[int, ...] = (512, 16),
                 concept_max_lengths: list[int] | tuple[int, ...] = (8, 6),
                 max_input_length: int = 128, max_text_length: int = 192,
                 planner: dict | None = None, executor: dict | None = None, planner_mtp_heads: int = 0,
                 rope_theta: float = 10000.0, rms_norm_eps: float = 1e-6, initializer_range: float = 0.02,
                 concept_gradient: str = "hard_em", concept_temperature: float = 1.0,
                 planner_entropy_weight: float = 0.0, estep_top_k: int = 4,
                 executor_z_dropout: float = 0.0,
                 estep_sources: list[str] | tuple[str, ...] = DEFAULT_ESTEP_SOURCES,
                 estep_diversity_penalty: float = 2.0, estep_refresh_steps: int = 50, estep_warmup_steps: int = 100,
                 estep_prior_weight: float = 1.0,
                 estep_selection: str = "joint", estep_warmup_end: str = "steps", proposer: str = "rare_characters",
                 posterior: dict | None = None, posterior_kl_weight: float = 1.0, posterior_temperature: float = 1.0,
                 text_concept_types: list[str] | tuple[str, ...] = (), share_text_embeddings: bool = False,
                 executor_copy: bool = False, planner_copy: bool = False, unlikelihood_weight: float = 0.0,
                 executor_checklist: bool = False, plan_separator_id: int | None = None, monitor_steps: int = 50,
                 monitor_batch_size: int = 16,
                 position_buckets: list[int] | tuple[int, ...] = (0, 16, 32, 64), **kwargs):
        self.vocab_size = vocab_size
        self.concept_types = list(concept_types)
        self.concept_vocab_sizes = [int(v) for v in concept_vocab_sizes]
        self.concept_max_lengths = [int(n) for n in concept_max_lengths]
        self.max_input_length = max_input_length
        self.max_text_length = max_text_length
        self.planner = {**DEFAULT_STACK, **(planner or {})}
        self.executor = {**DEFAULT_STACK, **(executor or {})}
        self.planner_mtp_heads = planner_mtp_heads
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.concept_gradient = concept_gradient
        self.concept_temperature = float(concept_temperature)
        self.planner_entropy_weight = float(planner_entropy_weight)
        self.executor_z_dropout = float(executor_z_dropout)
        self.estep_top_k = estep_top_k
        self.estep_sources = list(estep_sources)
        self.estep_diversity_penalty = float(estep_diversity_penalty)
        self.estep_refresh_steps = estep_refresh_steps
        self.estep_warmup_steps = estep_warmup_steps
        self.estep_prior_weight = float(estep_prior_weight)
        self.estep_selection = estep_selection
        self.estep_warmup_end = estep_warmup_end
        self.proposer = proposer
        self.posterior = {**self.executor, "num_hidden_layers": 1, **(posterior or {})}
        self.posterior_kl_weight = float(posterior_kl_weight)
        self.posterior_temperature = float(posterior_temperature)
        self.text_concept_types = list(text_concept_types)
        self.share_text_embeddings = bool(share_text_embeddings)
        self.executor_copy = bool(executor_copy)
        self.planner_copy = bool(planner_copy)
        self.executor_checklist = bool(executor_checklist)
        self.plan_separator_id = None if plan_separator_id is None else int(plan_separator_id)
        self.unlikelihood_weight = float(unlikelihood_weight)
        self.monitor_steps = monitor_steps
        self.monitor_batch_size = monitor_batch_size
        self.position_buckets = [int(b) for b in position_buckets]
        self._validate()
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)

    def _validate(self) -> None:
        if not self.concept_types:
            raise ValueError("concept_types must name at least one concept type, got an empty list")
        n = len(self.concept_types)
        for field in ("concept_vocab_sizes", "concept_max_lengths"):
            values = getattr(self, field)
            if len(values) != n or any(v < 1 for v in values):
                raise ValueError(f"{field} must hold one positive int per concept type ({n}), got {values}")
        if self.concept_gradient not in CONCEPT_GRADIENTS:
            raise ValueError(f"concept_gradient must be one of {CONCEPT_GRADIENTS}, got {self.concept_gradient!r}")
        unknown = [s for s in self.estep_sources if s not in ESTEP_SOURCES]
        if unknown or not self.estep_sources:
            raise ValueError(f"estep_sources must be a non-empty subset of {ESTEP_SOURCES}, got {self.estep_sources}")
        if "input" in self.estep_sources and self.proposer != "keywords":
            raise ValueError(f"the 'input' E-step source is the keywords proposer's plan of u: it needs "
                             f"proposer='keywords', got {self.proposer!r}")
        if self.estep_selection not in ESTEP_SELECTIONS:
            raise ValueError(f"estep_selection must be one of {ESTEP_SELECTIONS}, got {self.estep_selection!r}")
        if self.planner_entropy_weight < 0:
            raise ValueError(f"planner_entropy_weight must be ≥ 0, got {self.planner_entropy_weight}")
        if self.estep_warmup_end not in ESTEP_WARMUP_ENDS:
            raise ValueError(f"estep_warmup_end must be one of {ESTEP_WARMUP_ENDS}, got {self.estep_warmup_end!r}")
        if self.proposer not in PROPOSERS:
            raise ValueError(f"proposer must be one of {PROPOSERS}, got {self.proposer!r}")
        for name in self.text_concept_types:
            if name not in self.concept_types:
                raise ValueError(f"text_concept_types must name types of concept_types {self.concept_types}, "
                                 f"got {name!r}")
            if self.concept_vocab_sizes[self.concept_types.index(name)] != self.vocab_size:
                raise ValueError(f"text concept type {name!r} needs concept_vocab_sizes = vocab_size "
                                 f"({self.vocab_size}), got {self.concept_vocab_sizes[self.concept_types.index(name)]}")
        if self.unlikelihood_weight < 0:
            raise ValueError(f"unlikelihood_weight must be ≥ 0, got {self.unlikelihood_weight}")
        for field in ("executor_copy", "planner_copy"):
            if getattr(self, field) and not self.text_concept_types:
                raise ValueError(f"{field} copies text tokens: it needs text_concept_types, got none "
                                 f"(concept_types {self.concept_types})")
        if self.executor_checklist and not self.executor_copy:
            raise ValueError("executor_checklist tracks the copy head's slots: it needs executor_copy=True")
        if self.plan_separator_id is not None and not (self.text_concept_types
                                                      and 0 <= self.plan_separator_id < self.vocab_size):
            raise ValueError(f"plan_separator_id separates text-concept words: it needs text_concept_types and a "
                             f"token id in [0, {self.vocab_size}), got {self.plan_separator_id} with "
                             f"text_concept_types {self.text_concept_types}")
        for stack in ("planner", "executor", "posterior"):
            extra = sorted(set(getattr(self, stack)) - set(STACK_FIELDS))
            if extra:
                raise ValueError(f"{stack} takes only the fields {STACK_FIELDS}, got {extra}")
        if not self.planner["hidden_size"] == self.executor["hidden_size"] == self.posterior["hidden_size"]:
            raise ValueError("planner, executor and posterior hidden_size must be equal (the straight-through paths "
                             f"share the concept tables), got {self.planner['hidden_size']}, "
                             f"{self.executor['hidden_size']} and {self.posterior['hidden_size']}")
        if self.proposer == "learned" and set(self.text_concept_types) != set(self.concept_types):
            raise ValueError("proposer='learned' picks characters of y, so every concept type must be in "
                             f"text_concept_types; got concept_types {self.concept_types}, text_concept_types "
                             f"{self.text_concept_types}")
        if self.posterior_kl_weight < 0:
            raise ValueError(f"posterior_kl_weight must be ≥ 0, got {self.posterior_kl_weight}")
        if not self.posterior_temperature > 0:
            raise ValueError(f"posterior_temperature must be > 0, got {self.posterior_temperature}")
        for field in ("max_input_length", "max_text_length", "estep_top_k", "estep_refresh_steps", "monitor_steps",
                      "monitor_batch_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be ≥ 1, got {getattr(self, field)}")
        if self.estep_warmup_steps < 0:
            raise ValueError(f"estep_warmup_steps must be ≥ 0, got {self.estep_warmup_steps}")
        if not 0 <= self.executor_z_dropout < 1:
            raise ValueError(f"executor_z_dropout must be in [0, 1), got {self.executor_z_dropout}")
        if self.concept_gradient != "hard_em":
            hard_em_only = {"executor_z_dropout": self.executor_z_dropout, "planner_mtp_heads": self.planner_mtp_heads,
                            "proposer='learned'": self.proposer == "learned"}
            used = [name for name, value in hard_em_only.items() if value]
            if used:
                raise ValueError(f"{', '.join(used)} belong to hard-EM (its E-step and planner loss); "
                                 f"concept_gradient={self.concept_gradient!r} trains the planner through the "
                                 "executor instead (use concept_gradient='hard_em')")
        if not self.concept_temperature > 0:
            raise ValueError(f"concept_temperature must be > 0, got {self.concept_temperature}")
        if self.estep_diversity_penalty < 0:
            raise ValueError(f"estep_diversity_penalty must be ≥ 0, got {self.estep_diversity_penalty}")
        if self.estep_prior_weight < 0:
            raise ValueError(f"estep_prior_weight must be ≥ 0, got {self.estep_prior_weight}")
        if self.planner_mtp_heads < 0:
            raise ValueError(f"planner_mtp_heads must be ≥ 0, got {self.planner_mtp_heads}")

    @property
    def num_concept_types(self) -> int:
        return len(self.concept_types)

    @property
    def concept_type_vocab_sizes(self) -> list[int]:
        """Ids per type including the 3 specials."""
        return [v + NUM_CONCEPT_SPECIALS for v in self.concept_vocab_sizes]

    def stack_config(self, stack: str, max_positions: int, vocab_size: int | None = None) -> Qwen2Config:
        """The ``Qwen2Config`` of the ``planner``, ``executor`` or ``posterior`` stack (its decoder layers and RoPE);
        ``vocab_size`` sizes its own token table (the posterior reads the executor's, and keeps a 1-row one)."""
        config = Qwen2Config(vocab_size=vocab_size or self.vocab_size, max_position_embeddings=max_positions,
                             rope_theta=self.rope_theta, rms_norm_eps=self.rms_norm_eps,
                             pad_token_id=self.pad_token_id, attention_dropout=0.0, **getattr(self, stack))
        config._attn_implementation = self._attn_implementation or "sdpa"
        return config


PlannerExecutorConfig.register_for_auto_class("AutoConfig")
