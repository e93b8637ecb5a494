"""MERGE — Mask-Edit-Refine Gated Encoder (SPEC M1–M6, M9; seed 000 is the design, 001/002 the variants,
issue 12 the aligned recipe).

One ``forward`` is one refinement round on a batch of token sequences X_l (``<s>`` + characters):

1. Gate (M1): features of E's logits → MLP → hard Edit/Generate decision g (ST). The aligned recipe reads
   E's logits of X_l itself, so it decides from round 0; the straight-through recipe reads the previous
   round's and round 0 is Generate.
2. Mask-Picker (M2): scores s_i from E's states; P(wrong) = σ(−s_i). ``threshold`` deletes the tokens whose
   P(wrong) exceeds ``delete_threshold``; ``bottomk`` the K_del = 15 % lowest (ST); only rows with g = 1 delete.
3. Mask-Inserter (M3): a gap encoder over the skeleton S that sees each token's original position and how
   many tokens were deleted after it; ``gap_count`` classifies 0..C masks per gap (LevT's placeholder
   classifier), the ST inserters spread a predicted total over the gaps (Multinomial ST, top-k, pointer).
4. Fuse (M4): the mixed sequence Ŝ — skeleton tokens keep their soft embeddings, inserted positions take
   e[MASK] scaled by the ST count (exactly 1 forward, the count's gradient backward) — by pure indexing;
   relative positions pos'(i) = pos_orig(i) + masks inserted left of i.
5. Filler E (M5): bidirectional Qwen2 layers with RoPE, conditioned on the mask ratio t, MLM head tied
   to the embeddings.

With ``labels`` it returns each loss term (M6) separately: aligned recipe (``delete_labels`` and
``insert_labels``, the edit script of X_l → Y*, are the round's decisions, so every mask's target is known),
or the seeds' straight-through terms. Decoding over rounds is in ``generation_refinement.py``; the training
steps are in ``genlab.trainers.merge``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding
from transformers.utils import ModelOutput

from .configuration_merge import MergeConfig
from .generation_refinement import MergeGenerationMixin, default_refinement_config
from .masking import attention_mask, bidirectional_padding_rule
from .straight_through import (bernoulli_st, bottomk_st, differentiable_topk, gumbel_sigmoid_st,
                               multinomial_st, soft_deletion_weights, straight_through)


@dataclass
class MergeRoundOutput(ModelOutput):
    """One refinement round. B = batch, L = input length, N = fused length, G = L gaps (after each token)."""

    loss: torch.FloatTensor | None = None
    loss_recon: torch.FloatTensor | None = None  # M6 L_recon (t-weighted CE on [MASK] positions)
    loss_gate: torch.FloatTensor | None = None  # M6 λ_s·g + λ_c·g·relu(ΔH̄)
    loss_comp: torch.FloatTensor | None = None  # M6 λ_comp·KL(p_del ‖ Ber(r_target)); aligned: λ_detect·BCE
    loss_ins: torch.FloatTensor | None = None  # M6 λ_ins·H(z_g)
    loss_count: torch.FloatTensor | None = None  # count predictor CE (needed at inference, M3)
    logits: torch.FloatTensor | None = None  # (B, N, V)
    hidden_states: torch.FloatTensor | None = None  # (B, N, H) E's last states, for the next round's Picker
    fused_ids: torch.LongTensor | None = None  # (B, N) Ŝ_hard: skeleton ids, [MASK] at inserted positions
    attention_mask: torch.LongTensor | None = None  # (B, N)
    position_ids: torch.LongTensor | None = None  # (B, N)
    mask_positions: torch.BoolTensor | None = None  # (B, N) positions E fills
    mask_ratio: torch.FloatTensor | None = None  # (B,) t_l
    gate: torch.FloatTensor | None = None  # (B,) hard g ∈ {0, 1} (straight-through)
    gate_prob: torch.FloatTensor | None = None  # (B,) σ(gate logit)
    deletions: torch.FloatTensor | None = None  # (B, L) hard deletions on the input (straight-through)
    delete_prob: torch.FloatTensor | None = None  # (B, L) p_del
    insert_counts: torch.FloatTensor | None = None  # (B, G) masks per gap, G indexed by skeleton token (ST)
    gap_probs: torch.FloatTensor | None = None  # (B, G) z_g
    gap_logits: torch.FloatTensor | None = None  # (B, G, max_insert_count + 1) masks per gap (gap_count inserter)
    count_logits: torch.FloatTensor | None = None  # (B, max_insert_count + 1); None when a round inserts nothing


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) → (...) entropy in nats."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    return x.cumsum(-1) - x


class BidirectionalEncoder(nn.Module):
    """Qwen2 decoder layers run without the causal mask, RoPE at the given positions (E of M5, gap encoder of M3)."""

    def __init__(self, config: MergeConfig, num_layers: int):
        super().__init__()
        qwen2 = config.encoder_config(num_layers)
        self.layers = nn.ModuleList(Qwen2DecoderLayer(qwen2, i) for i in range(num_layers))
        for layer in self.layers:
            layer.self_attn.is_causal = False
        self.rotary_emb = Qwen2RotaryEmbedding(qwen2)
        self.norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.layer_config, self.model_config = qwen2, config

    def forward(self, embeds: torch.Tensor, valid: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        # the layers attend with the model's current backend (``set_attn_implementation`` changes the MergeConfig's)
        implementation = self.layer_config._attn_implementation = self.model_config._attn_implementation
        batch, n = valid.shape
        mask = attention_mask(bidirectional_padding_rule(valid), batch, n, n, device=valid.device,
                              implementation=implementation, dtype=embeds.dtype)  # M5
        position_embeddings = self.rotary_emb(embeds, position_ids)
        hidden = embeds
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids,
                           position_embeddings=position_embeddings)
        return self.norm(hidden)


class MergeGate(nn.Module):
    """M1 Gate. ``features``: [H̄, mean margin, low-confidence ratio, log self-ppl] + round embedding → 2-layer
    MLP. ``pooled`` (seed 001): wᵀ·LN(mean h). Returns the gate logit (B,); σ of it is g̃."""

    NUM_FEATURES = 4

    def __init__(self, config: MergeConfig):
        super().__init__()
        self.kind = config.gate
        self.entropy_threshold = config.entropy_threshold
        if self.kind == "pooled":
            self.norm = nn.LayerNorm(config.hidden_size)
            self.proj = nn.Linear(config.hidden_size, 1)
        else:
            self.round_embedding = nn.Embedding(config.max_rounds, self.NUM_FEATURES)
            self.mlp = nn.Sequential(nn.Linear(2 * self.NUM_FEATURES, config.gate_hidden_size), nn.GELU(),
                                     nn.Linear(config.gate_hidden_size, 1))

    def features(self, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, N, V), (B, N) → (B, 4): mean entropy, mean top-1/top-2 margin, low-confidence ratio, log self-ppl."""
        probs = torch.softmax(logits.float(), dim=-1)
        entropy = token_entropy(logits)  # (B, N)
        top2 = probs.topk(2, dim=-1).values  # (B, N, 2)
        margin = top2[..., 0] - top2[..., 1]
        low_conf = (entropy > self.entropy_threshold).float()
        neg_log_top1 = -torch.log(top2[..., 0].clamp(min=1e-9))
        stats = torch.stack([entropy, margin, low_conf, neg_log_top1], dim=-1)  # (B, N, 4)
        return masked_mean(stats, valid[..., None].expand_as(stats), dim=1)

    def forward(self, prev_logits: torch.Tensor, prev_hidden: torch.Tensor, valid: torch.Tensor,
                round_index: int) -> torch.Tensor:
        if self.kind == "pooled":
            pooled = masked_mean(prev_hidden, valid[..., None].expand_as(prev_hidden), dim=1)
            return self.proj(self.norm(pooled)).squeeze(-1)
        feats = self.features(prev_logits, valid)
        rounds = self.round_embedding.weight[min(round_index, self.round_embedding.num_embeddings - 1)]
        return self.mlp(torch.cat([feats, rounds.expand_as(feats)], dim=-1)).squeeze(-1)

    def decide(self, config: MergeConfig, edit: torch.Tensor | None, prev_logits, prev_hidden, valid: torch.Tensor,
               round_index: int, tau_gate: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """g of the round: (hard g (B,) with ST gradient, σ(logit) (B,), learned (B,) bool: rows whose g came from
        the Gate). ``edit`` forces g; the always_* variants are fixed, and so is round 0 of the straight-through
        recipe (Generate; the aligned recipe reads the current input's logits, so its Gate decides every round);
        training samples Gumbel-sigmoid at ``tau_gate``, inference thresholds σ at edit_threshold_base +
        step·round."""
        zeros = valid.new_zeros(valid.shape[0], dtype=torch.float)
        every_round = config.recipe == "aligned" or round_index > 0
        learned = config.gate in ("features", "pooled") and every_round and prev_logits is not None
        if not learned:
            fixed = zeros + float(config.gate == "always_edit")
            return (fixed if edit is None else edit.float()), fixed, torch.zeros_like(valid[:, 0])
        logit = self(prev_logits, prev_hidden, valid, round_index)
        prob = torch.sigmoid(logit)
        if self.training:
            noisy = logit + config.gate_noise_std * torch.randn_like(logit)
            gate = gumbel_sigmoid_st(noisy, tau_gate)
        else:
            threshold = config.edit_threshold_base + config.edit_threshold_step * round_index
            gate = straight_through((prob > threshold).float(), prob)
        if edit is None:
            return gate, prob, torch.ones_like(valid[:, 0])
        return edit.float(), prob, torch.zeros_like(valid[:, 0])


class MaskPicker(nn.Module):
    """M2 per-token keep score s_i = FFN(h_i) on the encoder states of X_l; P(wrong) = σ(−s_i) (low score → delete)."""

    def __init__(self, config: MergeConfig):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.GELU(),
                                   nn.Linear(config.hidden_size, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(hidden).squeeze(-1)  # (B, L)

    @staticmethod
    def num_deletions(config: MergeConfig, deletable: torch.Tensor) -> torch.Tensor:
        """K_del = clamp(round(0.15·L), 1, 30) per row, L = deletable tokens."""
        return (deletable.sum(-1) * config.delete_ratio).round().long().clamp(config.delete_min, config.delete_max)

    def decide(self, config: MergeConfig, hidden: torch.Tensor, deletable: torch.Tensor, gate: torch.Tensor,
               num_deletions, tau_del: float, wrong_prob: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Which tokens to delete: (hard deletions (B, L) with ST gradient, p_del (B, L)); the tokens whose
        P(wrong) = σ(−s) exceeds ``delete_threshold`` (``threshold``), bottom-K_del scores (``bottomk``) or a
        Bernoulli per token (``bernoulli``), only where deletable and in rows that edit. The aligned recipe's
        p_del is P(wrong); the straight-through recipe's is its soft Bottom-K weight at ``tau_del``.
        ``wrong_prob`` (B, L): another detector's P(wrong) (``fill_wrong_prob``) in place of σ(−s), for the
        ``threshold`` rule only (inference)."""
        if wrong_prob is not None:
            if config.picker != "threshold":
                raise ValueError(f"wrong_prob (detector='fill') feeds the threshold rule; picker must be "
                                 f"'threshold', got {config.picker!r}")
            deletions = straight_through((wrong_prob > config.delete_threshold).float(), wrong_prob)
            return deletions * deletable * gate[:, None], wrong_prob * deletable
        scores = self(hidden)  # (B, L)
        wrong = torch.sigmoid(-scores)
        if config.picker == "threshold":
            deletions = straight_through((wrong > config.delete_threshold).float(), wrong)
        elif config.picker == "bernoulli":
            deletions = 1.0 - bernoulli_st(logits=scores, noise=self.training)
        else:
            k = self.num_deletions(config, deletable) if num_deletions is None else num_deletions
            deletions = bottomk_st(scores, k, tau_del, valid_mask=deletable)
        deletions = deletions * deletable * gate[:, None]
        if config.recipe == "aligned":
            return deletions, wrong * deletable  # 0 on <s> and padding
        return deletions, soft_deletion_weights(scores, tau_del)


class MaskInserter(nn.Module):
    """M3: gap encoder over the skeleton → one gap after each skeleton token. It sees each token's position in
    X_l (RoPE; ``relative``) and how many tokens were deleted after it (seed 002), so it knows where text went
    missing. ``gap_count`` (aligned recipe): logits of 0..max_insert_count masks per gap (LevT's placeholder
    classifier). ST inserters: gap logits α_g and the count predictor of the row's total; ``pointer`` (seed 001):
    Bi-GRU + dot attention."""

    MAX_GAP_DELETIONS = 15  # deletions after a token are embedded up to this many

    def __init__(self, config: MergeConfig):
        super().__init__()
        self.kind = config.inserter
        hidden = config.hidden_size
        self.encoder = BidirectionalEncoder(config, config.num_gap_layers)
        self.deleted_embedding = nn.Embedding(self.MAX_GAP_DELETIONS + 1, hidden)
        if self.kind == "pointer":
            self.gru = nn.GRU(hidden, hidden // 2, batch_first=True, bidirectional=True)
            self.query = nn.Linear(hidden, hidden)
        else:
            self.gap_head = nn.Linear(hidden, config.max_insert_count + 1 if self.kind == "gap_count" else 1)
        self.count_head = nn.Linear(hidden, config.max_insert_count + 1)

    def forward(self, embeds: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor,
                deleted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """embeds (B, S, H), valid (B, S), positions (B, S), deleted (B, S) tokens deleted after each → gap logits
        (B, S) or (B, S, C + 1) for ``gap_count``, and the total-count logits (B, C + 1)."""
        embeds = embeds + self.deleted_embedding(deleted.clamp(0, self.MAX_GAP_DELETIONS))
        states = self.encoder(embeds, valid, positions)  # (B, S, H)
        pooled = masked_mean(states, valid[..., None].expand_as(states), dim=1)  # (B, H)
        if self.kind == "pointer":
            lengths = valid.sum(-1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(states, lengths, batch_first=True, enforce_sorted=False)
            gru, _ = self.gru(packed)
            gru, _ = nn.utils.rnn.pad_packed_sequence(gru, batch_first=True, total_length=states.shape[1])
            gap_logits = (gru * self.query(pooled)[:, None]).sum(-1) / math.sqrt(states.shape[-1])
        else:
            gap_logits = self.gap_head(states)
            gap_logits = gap_logits if self.kind == "gap_count" else gap_logits.squeeze(-1)
        return gap_logits, self.count_head(pooled)

    @staticmethod
    def gap_counts(gap_logits: torch.Tensor, gap_valid: torch.Tensor, lower: torch.Tensor | None,
                   upper: torch.Tensor | None) -> torch.Tensor:
        """``gap_count`` at inference: argmax masks per gap (B, S), the row total then held in [lower, upper]
        (B,) — a shortfall goes to the last gap (the continuation), an excess is trimmed from the right."""
        counts = gap_logits.argmax(-1) * gap_valid
        last = (gap_valid.sum(-1) - 1).clamp(min=0)[:, None]
        if lower is not None:
            short = (lower - counts.sum(-1)).clamp(min=0)
            counts = counts.scatter_add(1, last, short[:, None])
        if upper is not None:
            room = (upper[:, None] - exclusive_cumsum(counts)).clamp(min=0)
            counts = torch.minimum(counts, room)
        return counts.float()

    @staticmethod
    def num_insertions(config: MergeConfig, count_logits, skeleton_len, labels_len, num_insertions, min_length,
                       max_length) -> torch.Tensor:
        """K_ins per row: given, or |Y*| − |S| with labels (training), or the count predictor; clipped to bounds."""
        if num_insertions is not None:
            return num_insertions.to(skeleton_len.device).long()
        if labels_len is not None:
            return (labels_len - skeleton_len).clamp(0, config.max_insert_count)
        total = count_logits.argmax(-1)
        if min_length is not None:
            total = torch.maximum(total, min_length - skeleton_len)
        if max_length is not None:
            total = torch.minimum(total, max_length - skeleton_len)
        return total.clamp(min=0)

    def distribute(self, config: MergeConfig, gap_logits: torch.Tensor, total: torch.Tensor,
                   gap_valid: torch.Tensor) -> torch.Tensor:
        """Hard masks per gap (B, G) with ST gradient, summing to ``total`` (B,) per row."""
        if config.inserter == "multinomial":
            rounds = -(-int(total.max()) // config.insert_sub_round) if total.numel() else 0
            counts = torch.zeros_like(gap_logits)
            for sub in range(rounds):  # M3: sub-rounds of ≤ insert_sub_round masks
                k = (total - sub * config.insert_sub_round).clamp(0, config.insert_sub_round)
                counts = counts + multinomial_st(gap_logits, k, config.tau_insert, valid_mask=gap_valid,
                                                 noise=self.training)
            return counts
        # top-k / pointer: one mask in each of the top-k gaps; any excess goes to the last gap (continuation).
        counts = differentiable_topk(gap_logits, total, config.tau_insert, valid_mask=gap_valid)
        excess = (total - gap_valid.sum(-1)).clamp(min=0)
        last = (gap_valid.sum(-1) - 1).clamp(min=0)
        return counts + torch.zeros_like(counts).scatter(1, last[:, None], excess[:, None].to(counts.dtype))


class MergePreTrainedModel(PreTrainedModel):
    config_class = MergeConfig
    base_model_prefix = "merge"
    main_input_name = "input_ids"
    _no_split_modules = ["Qwen2DecoderLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True  # the M5 mask is a genlab.masking rule, so flex gets a BlockMask of it
    # _init_weights: PreTrainedModel's default covers Linear, Embedding, the norms and the RoPE buffers.


class MergeForMaskedRefinement(MergeGenerationMixin, MergePreTrainedModel):
    """MERGE: Gate (M1), Mask-Picker (M2), Mask-Inserter (M3), fuse (M4), shared filler E + tied MLM head (M5)."""

    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}

    def __init__(self, config: MergeConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.mask_ratio_proj = nn.Linear(1, config.hidden_size)  # M5 conditioning on t_l
        self.encoder = BidirectionalEncoder(config, config.num_hidden_layers)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.gate = MergeGate(config)
        self.picker = MaskPicker(config) if config.picker != "none" else None
        self.inserter = MaskInserter(config)
        self.post_init()
        self.generation_config = default_refinement_config(config)

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    # -- E (M5) -------------------------------------------------------------------------------------------------
    def fill_states(self, embeds: torch.Tensor, valid: torch.Tensor, position_ids: torch.Tensor,
                    mask_ratio: torch.Tensor) -> torch.Tensor:
        """E's last states (B, N, H) of Ŝ, conditioned on its mask ratio t (B,)."""
        conditioned = embeds + self.mask_ratio_proj(mask_ratio[:, None, None].to(embeds.dtype))
        return self.encoder(conditioned, valid, position_ids)

    def fill(self, embeds: torch.Tensor, valid: torch.Tensor, position_ids: torch.Tensor,
             mask_ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E(Ŝ, t): (B, N, H) embeddings → (logits (B, N, V), hidden (B, N, H)); with ``shifted_logits`` the
        logits at i come from the state at i − 1 (position 0, ``<s>``, keeps its own)."""
        hidden = self.fill_states(embeds, valid, position_ids, mask_ratio)
        logits = self.lm_head(hidden)
        if self.config.shifted_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits, hidden

    def encode_draft(self, input_ids: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E over X_l itself (t = its mask ratio): the states the Picker and Gate read when no previous round exists."""
        ratio = masked_mean((input_ids == self.config.mask_token_id).float(), valid)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        return self.fill(self.embed_tokens(input_ids), valid, positions, ratio)

    # -- M4 -----------------------------------------------------------------------------------------------------
    def fuse(self, skeleton_ids, skeleton_embeds, skeleton_valid, skeleton_pos, counts):
        """Ŝ: skeleton tokens at their shifted places, e[MASK]·(ST count scale) in the gaps; pure indexing (M4).

        skeleton_* (B, S[, H]); counts (B, S) float with ST gradient. Returns fused ids, embeddings, validity,
        mask positions and position ids, all (B, N[, H]).
        """
        hard = counts.detach().round().long() * skeleton_valid  # (B, S)
        new_pos = torch.arange(hard.shape[1], device=hard.device) + exclusive_cumsum(hard)  # (B, S)
        lengths = skeleton_valid.sum(-1) + hard.sum(-1)  # (B,)
        width = int(lengths.max())
        dump = torch.where(skeleton_valid, new_pos, width)  # padding goes to an extra column, dropped below
        ids = torch.full((hard.shape[0], width + 1), self.config.mask_token_id, device=hard.device)
        is_token = torch.zeros_like(ids, dtype=torch.bool).scatter(1, dump, True)[:, :width]
        ids = ids.scatter(1, dump, skeleton_ids)[:, :width]
        valid = torch.arange(width, device=hard.device) < lengths[:, None]
        ids = ids.masked_fill(~valid, self.config.pad_token_id)
        anchor = (is_token.long().cumsum(-1) - 1).clamp(min=0)  # (B, N) skeleton token left of / at each slot

        token_embeds = torch.zeros(ids.shape[0], width + 1, skeleton_embeds.shape[-1], dtype=skeleton_embeds.dtype,
                                   device=ids.device)
        token_embeds = token_embeds.scatter(1, dump[..., None].expand_as(skeleton_embeds), skeleton_embeds)[:, :width]
        count_scale = 1.0 + (counts - counts.detach()).gather(1, anchor)  # exactly 1 forward, d count backward
        mask_embed = self.embed_tokens.weight[self.config.mask_token_id] * count_scale[..., None]
        is_mask = valid & ~is_token
        embeds = torch.where(is_token[..., None], token_embeds, mask_embed)

        if self.config.positions == "relative":  # pos'(i) = pos_orig(i) + #masks inserted left of i (seed 002)
            anchor_pos = (skeleton_pos + exclusive_cumsum(hard)).gather(1, anchor)
            positions = anchor_pos + torch.arange(width, device=ids.device) - new_pos.gather(1, anchor)
        else:
            positions = torch.arange(width, device=ids.device).expand_as(ids)
        return ids, embeds, valid, is_mask, positions * valid

    # -- one round ------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        delete_labels: torch.LongTensor | None = None,
        insert_labels: torch.LongTensor | None = None,
        prev_logits: torch.Tensor | None = None,
        prev_hidden: torch.Tensor | None = None,
        round_index: int = 0,
        edit: torch.Tensor | None = None,
        num_deletions: int | torch.Tensor | None = None,
        num_insertions: torch.Tensor | None = None,
        wrong_prob: torch.Tensor | None = None,
        min_length: torch.Tensor | None = None,
        max_length: torch.Tensor | None = None,
        tau_gate: float | None = None,
        tau_del: float | None = None,
        **kwargs,
    ) -> MergeRoundOutput:
        """One round X_l → Ŝ_l → logits. ``edit`` (B,) forces g (1 edit, 0 generate); None lets the Gate decide.
        ``labels`` (B, M) = Y*, -100 padded, returns the M6 losses.

        Aligned recipe: ``delete_labels`` / ``insert_labels`` (B, L), the edit script of X_l → Y*
        (``genlab.edits``), are the round's decisions (teacher-forced, LevT-style), so Ŝ is aligned with Y* by
        construction; the Picker and Gate read E's states of X_l itself. Straight-through recipe:
        ``prev_logits``/``prev_hidden`` (B, L, ·) are E's outputs of the previous round, and with labels
        K_ins = |Y*| − |S|. ``wrong_prob`` (B, L): P(wrong) from another detector (``fill_wrong_prob``), which the
        threshold Picker reads in place of its own σ(−s)."""
        c = self.config
        valid = (input_ids != c.pad_token_id) if attention_mask is None else attention_mask.bool()
        tau_gate = c.tau_gate_end if tau_gate is None else tau_gate
        tau_del = c.tau_del_end if tau_del is None else tau_del
        deletable = valid & (input_ids != c.bos_token_id)
        aligned = c.recipe == "aligned"
        needs_picker = self.picker is not None and not (edit is not None and not bool(edit.any()))
        gate_learned_possible = c.gate in ("features", "pooled") and edit is None
        if aligned and (needs_picker or gate_learned_possible or labels is not None):
            prev_logits, prev_hidden = self.encode_draft(input_ids, valid)  # the states of X_l itself (B5)
        gate, gate_prob, gate_learned = self.gate.decide(c, edit, prev_logits, prev_hidden, valid, round_index,
                                                         tau_gate)
        if aligned:
            gate = gate * deletable.any(-1)  # nothing to edit in an empty row

        embeds = self.embed_tokens(input_ids)  # (B, L, H)
        if needs_picker:
            if prev_hidden is None:
                _, prev_hidden = self.encode_draft(input_ids, valid)
            picker_states = prev_hidden if aligned else prev_hidden.detach()
            deletions, delete_prob = self.picker.decide(c, picker_states, deletable, gate, num_deletions, tau_del,
                                                        wrong_prob)
        else:
            deletions, delete_prob = torch.zeros_like(embeds[..., 0]), None
        if delete_labels is not None:
            deletions = delete_labels.to(embeds.dtype) * deletable
        # M2 soft deletion at the embedding layer: x̂ = (1 − d)·e(x) + d·e[MASK]
        mask_vec = self.embed_tokens.weight[c.mask_token_id]
        soft_embeds = embeds * (1.0 - deletions[..., None]) + mask_vec * deletions[..., None]

        # skeleton S: kept tokens, compacted to the left (also removes left padding)
        keep = valid & (deletions.detach() < 0.5)
        order = torch.sort((~keep).long(), dim=1, stable=True).indices  # kept first, original order
        skeleton_valid = keep.gather(1, order)
        skeleton_ids = input_ids.gather(1, order).masked_fill(~skeleton_valid, c.pad_token_id)
        skeleton_embeds = soft_embeds.gather(1, order[..., None].expand_as(soft_embeds))
        skeleton_pos = (valid.long().cumsum(-1) - 1).gather(1, order)  # pos_orig in X_l
        gap_of = (keep.long().cumsum(-1) - 1).clamp(min=0)  # (B, L) skeleton rank of the kept token on the left
        deleted_after = torch.zeros_like(gap_of).scatter_add(1, gap_of, (valid & ~keep).long())  # (B, S)

        inserter_pos = skeleton_pos if c.positions == "relative" else (skeleton_valid.cumsum(-1) - 1).clamp(min=0)
        if labels is None and num_insertions is not None and not bool(num_insertions.any()):
            # nothing to insert (Mask-Predict re-masking, the MLM term): no gap encoder pass
            counts = torch.zeros_like(skeleton_valid, dtype=torch.float)
            gap_logits = count_logits = gap_probs = None
        else:
            gap_logits, count_logits = self.inserter(skeleton_embeds, skeleton_valid,
                                                     inserter_pos * skeleton_valid, deleted_after)
            counts, gap_probs = self.insert_counts(gap_logits, count_logits, skeleton_valid, order, labels,
                                                   insert_labels, num_insertions, min_length, max_length)

        fused_ids, fused_embeds, fused_valid, is_mask, positions = self.fuse(
            skeleton_ids, skeleton_embeds, skeleton_valid, skeleton_pos, counts)
        is_mask = is_mask | (fused_valid & (fused_ids == c.mask_token_id))
        mask_ratio = masked_mean(is_mask.float(), fused_valid)
        logits, hidden = self.fill(fused_embeds, fused_valid, positions, mask_ratio)

        output = MergeRoundOutput(
            logits=logits, hidden_states=hidden, fused_ids=fused_ids, attention_mask=fused_valid.long(),
            position_ids=positions, mask_positions=is_mask, mask_ratio=mask_ratio, gate=gate, gate_prob=gate_prob,
            deletions=deletions, delete_prob=delete_prob, insert_counts=counts, gap_probs=gap_probs,
            gap_logits=gap_logits if c.inserter == "gap_count" else None, count_logits=count_logits)
        if labels is not None and aligned:
            if delete_labels is None or insert_labels is None:
                raise ValueError("the aligned recipe trains on delete_labels and insert_labels (genlab.edits."
                                 "edit_labels of each draft → target) besides labels")
            self.add_aligned_losses(output, labels, delete_labels=delete_labels, deletable=deletable,
                                    gate_learned=gate_learned, skeleton_labels=counts.long(),
                                    skeleton_valid=skeleton_valid)
        elif labels is not None:
            missing = ((labels != -100).sum(-1) - skeleton_valid.sum(-1)).clamp(0, c.max_insert_count)
            self.add_losses(output, labels, prev_logits=prev_logits, gate_learned=gate_learned, deletable=deletable,
                            missing=missing)
        return output

    def insert_counts(self, gap_logits, count_logits, skeleton_valid, order, labels, insert_labels, num_insertions,
                      min_length, max_length) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Masks per skeleton gap (B, S) float, and the ST inserters' gap distribution (B, S) (None for
        ``gap_count``): the edit script's counts when given (aligned training), else a row total held to
        ``num_insertions`` or to the length bounds."""
        c = self.config
        skeleton_len = skeleton_valid.sum(-1)
        if c.inserter == "gap_count":
            if insert_labels is not None:
                return insert_labels.gather(1, order).masked_fill(~skeleton_valid, 0).float(), None
            if num_insertions is not None:
                total = num_insertions.to(skeleton_len.device).long()
                return self.inserter.gap_counts(gap_logits, skeleton_valid, total, total), None
            return self.inserter.gap_counts(gap_logits, skeleton_valid,
                                            None if min_length is None else min_length - skeleton_len,
                                            None if max_length is None else max_length - skeleton_len), None
        labels_len = (labels != -100).sum(-1) if labels is not None else None
        total = self.inserter.num_insertions(c, count_logits, skeleton_len, labels_len, num_insertions, min_length,
                                             max_length)
        counts = self.inserter.distribute(c, gap_logits, total, skeleton_valid)
        return counts, torch.softmax(gap_logits.masked_fill(~skeleton_valid, torch.finfo(gap_logits.dtype).min), -1)

    # -- M6 -----------------------------------------------------------------------------------------------------
    @staticmethod
    def masked_fill_loss(out: MergeRoundOutput, labels: torch.Tensor) -> torch.Tensor:
        """(B, N) CE of every fused position against Y* at the same index (aligned when Ŝ was built from the
        edit script) and the positions that count: masks with a target."""
        width = out.fused_ids.shape[1]
        target = F.pad(labels, (0, max(0, width - labels.shape[1])), value=-100)[:, :width]  # (B, N)
        ce = F.cross_entropy(out.logits.float().transpose(1, 2), target.clamp(min=0), reduction="none")  # (B, N)
        return ce, out.mask_positions & (target != -100)

    def add_aligned_losses(self, out: MergeRoundOutput, labels: torch.Tensor, *, delete_labels: torch.Tensor,
                           deletable: torch.Tensor, gate_learned: torch.Tensor, skeleton_labels: torch.Tensor,
                           skeleton_valid: torch.Tensor) -> None:
        """The aligned recipe's terms: fill CE on the masks (mean over masks), λ_detect·BCE of P(wrong) against
        the deletion labels, λ_count·CE of each gap's count, λ_gate_label·BCE of g̃ against "row needs an edit"."""
        c = self.config
        ce, scored = self.masked_fill_loss(out, labels)
        out.loss_recon = (ce * scored).sum() / scored.sum().clamp(min=1)
        if out.delete_prob is not None:
            p_wrong = out.delete_prob.float().clamp(1e-6, 1 - 1e-6)
            bce = F.binary_cross_entropy(p_wrong, delete_labels.float(), reduction="none")
            out.loss_comp = c.lambda_detect * masked_mean(bce.flatten(), deletable.flatten())
        else:
            out.loss_comp = out.logits.new_zeros(())
        count_ce = F.cross_entropy(out.gap_logits.float().transpose(1, 2), skeleton_labels, reduction="none")
        out.loss_count = c.lambda_count * masked_mean(count_ce.flatten(), skeleton_valid.flatten())
        needs_edit = (delete_labels.bool() & deletable).any(-1).float()
        gate_bce = F.binary_cross_entropy(out.gate_prob.float().clamp(1e-6, 1 - 1e-6), needs_edit, reduction="none")
        out.loss_gate = c.lambda_gate_label * masked_mean(gate_bce, gate_learned)
        out.loss_ins = out.logits.new_zeros(())
        out.loss = out.loss_recon + out.loss_comp + out.loss_count + out.loss_gate

    def add_losses(self, out: MergeRoundOutput, labels: torch.Tensor, *, prev_logits: torch.Tensor | None,
                   gate_learned: torch.Tensor, deletable: torch.Tensor, missing: torch.Tensor) -> None:
        """The straight-through recipe's ``out.loss*``: L_recon, L_gate, L_comp, L_ins (M6) and the count
        predictor's CE, as the seeds state them (Y* scored at the same index, B1 — kept as the ablation).

        labels (B, M) Y*; prev_logits (B, L, V) or None; gate_learned (B,) rows whose g the Gate chose;
        deletable (B, L) tokens the Picker may delete; missing (B,) the count predictor's target |Y*| − |S|.
        """
        c = self.config
        ce, scored = self.masked_fill_loss(out, labels)
        has_masks = scored.any(-1)
        per_row = out.mask_ratio * masked_mean(ce, scored)  # t_l-weighted
        out.loss_recon = (per_row * has_masks).sum() / has_masks.sum().clamp(min=1)

        entropy_now = masked_mean(token_entropy(out.logits.detach()), out.attention_mask.bool())
        if prev_logits is not None:
            prev_valid = torch.ones(prev_logits.shape[:2], dtype=torch.bool, device=prev_logits.device)
            delta = (entropy_now - masked_mean(token_entropy(prev_logits.detach()), prev_valid)).clamp(min=0)
        else:
            delta = torch.zeros_like(entropy_now)
        gate_cost = c.lambda_sparsity * out.gate_prob + c.lambda_reward * out.gate_prob * delta
        out.loss_gate = masked_mean(gate_cost, gate_learned)

        if out.delete_prob is not None:
            p = out.delete_prob.float().clamp(1e-6, 1 - 1e-6)
            r = c.deletion_target_rate
            kl = p * torch.log(p / r) + (1 - p) * torch.log((1 - p) / (1 - r))
            out.loss_comp = c.lambda_comp * masked_mean(kl.flatten(), deletable.flatten())
        else:
            out.loss_comp = out.logits.new_zeros(())
        z = out.gap_probs.float()
        gap_entropy = -(z * torch.log(z.clamp(min=1e-9))).sum(-1)
        out.loss_ins = c.lambda_ins * gap_entropy.mean()
        out.loss_count = c.lambda_count * F.cross_entropy(out.count_logits.float(), missing)
        out.loss = out.loss_recon + out.loss_gate + out.loss_comp + out.loss_ins + out.loss_count


MergeForMaskedRefinement.register_for_auto_class("AutoModel")
