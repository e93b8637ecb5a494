"""Configuration of MERGE, the Mask-Edit-Refine Gated Encoder (SPEC M1–M9; seeds 000, 001, 002).

Every hyperparameter of the seeds lives here with the seed's default, plus the M9 ablation switches. The
model reads its settings only from this object; decoding defaults (M8) are also copied into
``generation_config.json`` by the model.
"""

from __future__ import annotations

from transformers import PretrainedConfig, Qwen2Config

RECIPES = ("aligned", "straight_through")
GATES = ("features", "pooled", "always_edit", "always_generate")
PICKERS = ("threshold", "bottomk", "bernoulli", "none")
INSERTERS = ("gap_count", "multinomial", "pointer", "topk")
POSITIONS = ("relative", "absolute")
ALIGNED_INSERTERS = ("gap_count",)  # the aligned recipe supervises a count per gap
ST_INSERTERS = ("multinomial", "pointer", "topk")  # the seeds' recipe distributes a total over the gaps


class MergeConfig(PretrainedConfig):
    """Hyperparameters of ``MergeForMaskedRefinement``.

    Encoder E (M5): ``hidden_size``, ``num_hidden_layers``, ``intermediate_size``, ``num_attention_heads``,
    ``num_key_value_heads``, RoPE ``rope_theta``; the gap encoder of the Mask-Inserter (M3) has
    ``num_gap_layers`` layers of the same width.

    Recipe (issue 12): ``aligned`` (default) trains every decision on labels read off an edit script of draft →
    target (``genlab.edits``): the Picker as a deletion detector (BCE, ``lambda_detect``), a count per gap
    (LevT's placeholder classifier, CE ``lambda_count``), the filler on masks aligned with Y*, the Gate on "this
    row needs an edit" (BCE, ``lambda_gate_label``), with the gold decisions in the forward pass (one round per
    step). At inference the Picker deletes where P(wrong) > ``delete_threshold``. ``straight_through`` is the
    seeds' end-to-end recipe (Bottom-K ST, Multinomial ST, the L_comp/L_ins priors), kept as an ablation.

    Rounds (M8): ``max_rounds`` = L_max 6; stop when the mean confidence of the filled masks >
    ``confidence_stop`` (0.9) or Levenshtein(X_new, X) < ``levenshtein_stop`` (1: the round edited nothing);
    auto-mode edit threshold τ_edit(l) = ``edit_threshold_base`` + ``edit_threshold_step``·l = 0.4 + 0.1·l.

    Gate (M1): features (mean entropy, mean top-1/top-2 margin, ratio of tokens with entropy >
    ``entropy_threshold`` = τ_H 1.5 nats, self-perplexity, round embedding) → 2-layer MLP of
    ``gate_hidden_size``; Gumbel-sigmoid ST with τ_gate annealed ``tau_gate_start`` 2 → ``tau_gate_end`` 0.2;
    early-training noise std ``gate_noise_std`` 0.05.

    Mask-Picker (M2): K_del = clamp(round(``delete_ratio``·L), ``delete_min``, ``delete_max``) =
    clamp(round(0.15·L), 1, 30); τ_del annealed ``tau_del_start`` 2 → ``tau_del_end`` 0.2; the compression
    prior of L_comp is Ber(``deletion_target_rate``).

    Mask-Inserter (M3): the gap encoder sees each skeleton token's original position (RoPE) and how many tokens
    were deleted after it. ``gap_count``: a 0..``max_insert_count`` classifier per gap. ST inserters:
    Multinomial ST over the gaps at temperature ``tau_insert``, drawn in sub-rounds of at most
    ``insert_sub_round`` (8) masks; the count predictor classifies the number of missing tokens in
    0..``max_insert_count``.

    Losses (M6): λ_s ``lambda_sparsity`` 0.1, λ_c ``lambda_reward`` 0.2, λ_comp ``lambda_comp`` 0.05,
    λ_ins ``lambda_ins`` 0.01, and the count predictor's CE weight ``lambda_count`` 1.0.

    Ablations (M9): ``recipe`` in ``aligned|straight_through``, ``gate`` in
    ``features|pooled|always_edit|always_generate``, ``picker`` in
    ``threshold|bottomk|bernoulli|none`` (bottomk = the fixed K_del 15 %; none = insert-only), ``inserter`` in
    ``gap_count`` (aligned) or ``multinomial|pointer|topk`` (straight_through),
    ``positions`` in ``relative|absolute`` (M4: relative = pos_orig(i) + masks inserted left of i).

    ``shifted_logits``: the filler reads token i's prediction off the state at i − 1, as a causal LM does, so a
    filler initialised from an AR keeps what the AR knows (Dream's and DiffuLLaMA's shift for AR → masked
    diffusion adaptation); off, off the state at i.
    """

    model_type = "merge"

    def __init__(
        self,
        vocab_size: int = 5408,
        hidden_size: int = 256,
        num_hidden_layers: int = 5,
        intermediate_size: int = 704,
        num_attention_heads: int = 4,
        num_key_value_heads: int = 2,
        num_gap_layers: int = 1,
        max_position_embeddings: int = 256,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        pad_token_id: int = 0,
        bos_token_id: int = 2,
        eos_token_id: int = 3,
        mask_token_id: int = 4,
        max_rounds: int = 6,
        confidence_stop: float = 0.9,
        levenshtein_stop: int = 1,
        edit_threshold_base: float = 0.4,
        edit_threshold_step: float = 0.1,
        entropy_threshold: float = 1.5,
        gate_hidden_size: int = 32,
        gate_noise_std: float = 0.05,
        tau_gate_start: float = 2.0,
        tau_gate_end: float = 0.2,
        delete_threshold: float = 0.5,
        delete_ratio: float = 0.15,
        delete_min: int = 1,
        delete_max: int = 30,
        tau_del_start: float = 2.0,
        tau_del_end: float = 0.2,
        deletion_target_rate: float = 0.15,
        tau_insert: float = 1.0,
        insert_sub_round: int = 8,
        max_insert_count: int = 128,
        lambda_sparsity: float = 0.1,
        lambda_reward: float = 0.2,
        lambda_comp: float = 0.05,
        lambda_ins: float = 0.01,
        lambda_count: float = 1.0,
        lambda_detect: float = 1.0,
        lambda_gate_label: float = 0.1,
        recipe: str = "aligned",
        gate: str = "features",
        picker: str = "threshold",
        inserter: str = "gap_count",
        positions: str = "relative",
        shifted_logits: bool = False,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.num_gap_layers = num_gap_layers
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.mask_token_id = mask_token_id
        self.max_rounds = max_rounds
        self.confidence_stop = confidence_stop
        self.levenshtein_stop = levenshtein_stop
        self.edit_threshold_base = edit_threshold_base
        self.edit_threshold_step = edit_threshold_step
        self.entropy_threshold = entropy_threshold
        self.gate_hidden_size = gate_hidden_size
        self.gate_noise_std = gate_noise_std
        self.tau_gate_start = tau_gate_start
        self.tau_gate_end = tau_gate_end
        self.delete_threshold = delete_threshold
        self.delete_ratio = delete_ratio
        self.delete_min = delete_min
        self.delete_max = delete_max
        self.tau_del_start = tau_del_start
        self.tau_del_end = tau_del_end
        self.deletion_target_rate = deletion_target_rate
        self.tau_insert = tau_insert
        self.insert_sub_round = insert_sub_round
        self.max_insert_count = max_insert_count
        self.lambda_sparsity = lambda_sparsity
        self.lambda_reward = lambda_reward
        self.lambda_comp = lambda_comp
        self.lambda_ins = lambda_ins
        self.lambda_count = lambda_count
        self.lambda_detect = lambda_detect
        self.lambda_gate_label = lambda_gate_label
        self.recipe = recipe
        self.gate = gate
        self.picker = picker
        self.inserter = inserter
        self.positions = positions
        self.shifted_logits = shifted_logits
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
        self._validate()

    def _validate(self) -> None:
        for field, allowed in (("recipe", RECIPES), ("gate", GATES), ("picker", PICKERS), ("inserter", INSERTERS),
                               ("positions", POSITIONS)):
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"{field} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
        for field in ("hidden_size", "num_hidden_layers", "num_gap_layers", "max_rounds", "insert_sub_round",
                      "max_insert_count", "max_position_embeddings", "delete_min"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        inserters = ALIGNED_INSERTERS if self.recipe == "aligned" else ST_INSERTERS
        if self.inserter not in inserters:
            raise ValueError(f"inserter must be one of {', '.join(repr(a) for a in inserters)} with recipe="
                             f"{self.recipe!r}, got {self.inserter!r}")
        if self.delete_max < self.delete_min:
            raise ValueError(f"delete_max must be >= delete_min ({self.delete_min}), got {self.delete_max}")
        for field in ("delete_ratio", "deletion_target_rate", "delete_threshold"):
            if not 0.0 < getattr(self, field) < 1.0:
                raise ValueError(f"{field} must be in (0, 1), got {getattr(self, field)}")
        if not 0.0 < self.confidence_stop <= 1.0:
            raise ValueError(f"confidence_stop must be in (0, 1], got {self.confidence_stop}")
        if self.levenshtein_stop < 0:
            raise ValueError(f"levenshtein_stop must be >= 0, got {self.levenshtein_stop}")
        for field in ("tau_gate_start", "tau_gate_end", "tau_del_start", "tau_del_end", "tau_insert"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be > 0, got {getattr(self, field)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                             f"({self.num_attention_heads})")

    def encoder_config(self, num_layers: int) -> Qwen2Config:
        """The ``Qwen2Config`` whose decoder layers and RoPE build E (M5) or the gap encoder (M3)."""
        config = Qwen2Config(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                             intermediate_size=self.intermediate_size, num_hidden_layers=num_layers,
                             num_attention_heads=self.num_attention_heads,
                             num_key_value_heads=self.num_key_value_heads,
                             max_position_embeddings=self.max_position_embeddings, rope_theta=self.rope_theta,
                             rms_norm_eps=self.rms_norm_eps, attention_dropout=0.0)
        config._attn_implementation = self._attn_implementation or "sdpa"
        return config


MergeConfig.register_for_auto_class("AutoConfig")
