"""`genlab train merge`: MergeTrainer — MERGE rounds with staged freezing (M7, issue 12).

Two recipes (``--recipe``, the model config's ``recipe``):

- ``aligned`` (default): edit pairs are corpus sentences with real Chinese typing errors, generation pairs a
  short prefix → the sentence (``genlab.trainers.merge_data``); each step is one teacher-forced round whose
  deletions and per-gap insertions are the pair's edit script (LevT-style), so every label is aligned: fill CE
  on the masks, the Picker as a delete detector, per-gap counts, the Gate on "needs an edit". Every step also
  trains the filler as an MLM on the batch's text packed into ``--pack-width`` rows (``--lambda-mlm``); the
  first ``--stage1`` of the steps are that MLM alone. ``--objective per_character`` trains the baseline of
  the same size, data and steps instead: the filler reads the unmasked draft and predicts every character.
- ``straight_through`` (the seeds' recipe, kept as the ablation): random-character noise; stage 1 E as
  full-mask MLM, stage 2 + Picker/Inserter with the gate forced by the pair, stage 3 + Gate; L_train ~ U(1,
  ``rounds``) unrolled rounds with one backward (``bptt_rounds``: truncated BPTT); teacher forcing 1 until
  ``teacher_forcing`` of the steps, 0.5 after; τ_gate and τ_del annealed from the config's start to end values.

Every schedule is a pure function of ``state.global_step``, so ``resume_from_checkpoint`` continues exactly;
each loss term and the edit statistics are logged through the Trainer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments, set_seed

from ..configuration_merge import GATES, INSERTERS, PICKERS, POSITIONS, RECIPES, MergeConfig
from ..data import corpus_sources, load_corpus
from ..distributed import main_process_first
from ..generation_refinement import fit_width
from ..modeling_merge import MergeForMaskedRefinement
from ..presets import AR_PRESETS
from ..runs import RunDir, export_model_run, prepare_run_dir, read_manifest
from ..spelling import TypoNoise, fill_rule
from ..tokenization import load_tokenizer, resolve_tokenizer
from .callbacks import TimeBudgetCallback, WindowedMetrics
from .common import (TrainConfig, announce, check_choice, check_positive, default_training_arguments,
                     finalize_training_arguments, resume_checkpoint, run_training)
from .merge_data import OBJECTIVES, collate, make_aligned_pairs, make_pairs, pack_rows

FILLER_MODULES = ("embed_tokens", "mask_ratio_proj", "encoder", "lm_head")
TRAINING_DEFAULTS = dict(max_steps=2000, learning_rate=1e-3)


@dataclass
class MergeTrainConfig(TrainConfig):
    """`genlab train merge`: MERGE's options besides `TrainingArguments` (schedule fractions of ``max_steps``)."""

    run_dir: str = field(default="runs/merge-tiny", metadata={"help": "where the checkpoint and logs go"})
    preset: str = field(default="tiny", metadata={"choices": sorted(AR_PRESETS),
                                                  "help": "width/depth matched to this AR preset"})
    rounds: int = field(default=3, metadata={"help": "L: unrolled training rounds (U(1, L))"})
    bptt_rounds: int = field(default=0, metadata={"help": "truncated BPTT: keep the last k rounds' graph"})
    max_chars: int = field(default=64, metadata={"help": "longest sentence, in characters"})
    recipe: str = field(default="aligned", metadata={"choices": list(RECIPES),
                                                     "help": "aligned edit-script labels, or the seeds' ST recipe"})
    objective: str = field(default="merge", metadata={"choices": list(OBJECTIVES),
                                                      "help": "MERGE rounds, or the per-character baseline"})
    edit_fraction: float = field(default=0.7, metadata={"help": "share of edit pairs (the rest: generation pairs)"})
    clean_fraction: float = field(default=0.25, metadata={"help": "aligned: edit pairs left without typos"})
    typo_frequency_power: float = field(default=1.0, metadata={
        "help": "aligned: a typo's confusable is drawn ∝ (corpus count + 1)^this (0: by confusion-list rank only)"})
    typo_fuzzy: bool = field(default=False, metadata={
        "help": "aligned: typos drawn from the wider fuzzy-pinyin confusion sets (as the bench's validation typos)"})
    lambda_mlm: float = field(default=1.0, metadata={"help": "aligned: weight of the packed-text MLM term"})
    pack_width: int = field(default=128, metadata={"help": "aligned: characters per packed MLM row (+ <s>)"})
    max_corruption: float = field(default=0.2, metadata={"help": "straight-through: noise rate ~ U(0.05, this)"})
    stage1: float = field(default=0.1, metadata={"help": "fraction of max-steps in stage 1 (E alone, MLM)"})
    stage2: float = field(default=0.5, metadata={"help": "fraction of max-steps before the Gate trains"})
    teacher_forcing: float = field(default=0.4, metadata={"help": "fraction of max-steps fully teacher-forced"})
    anneal: float = field(default=0.6, metadata={"help": "fraction of max-steps to anneal τ 2 → 0.2"})
    gate: str = field(default="features", metadata={"choices": list(GATES)})
    picker: str = field(default="threshold", metadata={"choices": list(PICKERS)})
    inserter: str = field(default="gap_count", metadata={"choices": list(INSERTERS)})
    positions: str = field(default="relative", metadata={"choices": list(POSITIONS)})
    filler_init: str | None = field(default=None, metadata={
        "help": "an AR run (same tokenizer and preset) whose embeddings, first layers and final norm initialise "
                "the filler E, as AR → masked-diffusion adaptation does (DiffuLLaMA, Dream); default: random"})

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "preset", AR_PRESETS)
        check_choice(self, "recipe", RECIPES)
        check_choice(self, "objective", OBJECTIVES)
        check_positive(self, "rounds", "max_chars", "pack_width")
        if self.objective == "per_character" and self.recipe != "aligned":
            raise ValueError("objective='per_character' trains on aligned same-length pairs: use recipe='aligned'")

    def variants(self) -> dict[str, str]:
        """The M9 switches, as ``MergeConfig`` fields."""
        return dict(recipe=self.recipe, gate=self.gate, picker=self.picker, inserter=self.inserter,
                    positions=self.positions)


# -- schedules (pure functions of the global step) ---------------------------------------------------------------
@dataclass(frozen=True)
class MergeSchedule:
    """When each stage starts and how teacher forcing and τ move; the τ end points are the model config's."""

    rounds: int = 3
    stage1_steps: int = 200
    stage2_steps: int = 500
    teacher_forcing_steps: int = 400
    anneal_steps: int = 1000
    bptt_rounds: int = 0  # 0: backprop through every round
    seed: int = 0
    recipe: str = "aligned"  # the model config's recipe: which loss a step computes
    objective: str = "merge"  # or "per_character" (the baseline corrector)
    lambda_mlm: float = 1.0  # aligned: the packed-text MLM term's weight after stage 1
    pack_width: int = 128  # characters + <s> per packed MLM row

    def stage(self, step: int) -> int:
        return 1 if step < self.stage1_steps else 2 if step < self.stage2_steps else 3

    def anneal(self, step: int, start: float, end: float) -> float:
        """Linear ``start`` → ``end`` over anneal_steps, then constant."""
        frac = min(1.0, step / max(1, self.anneal_steps))
        return start + (end - start) * frac

    def tau_gate(self, step: int, config: MergeConfig) -> float:
        return self.anneal(step, config.tau_gate_start, config.tau_gate_end)

    def tau_del(self, step: int, config: MergeConfig) -> float:
        return self.anneal(step, config.tau_del_start, config.tau_del_end)

    def teacher_forcing(self, step: int) -> float:
        return 1.0 if step < self.teacher_forcing_steps else 0.5

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + step)

    def unrolled_rounds(self, step: int) -> int:
        """L_train ~ U(1, rounds), drawn from the step's own generator."""
        return int(torch.randint(1, self.rounds + 1, (), generator=self.generator(step)))


def trainable_modules(stage: int) -> tuple[str, ...]:
    return FILLER_MODULES + (("picker", "inserter") if stage >= 2 else ()) + (("gate",) if stage >= 3 else ())


def apply_freezing(model: MergeForMaskedRefinement, stage: int) -> None:
    """Staged freezing: parameters outside the stage's modules get no gradient (AdamW then skips them)."""
    allowed = trainable_modules(stage)
    for name, param in model.named_parameters():
        param.requires_grad_(name.split(".")[0] in allowed)


# -- the unrolled training forward ---------------------------------------------------------------------------------
def mlm_loss(model: MergeForMaskedRefinement, labels: torch.Tensor, schedule: MergeSchedule,
             generator: torch.Generator) -> torch.Tensor:
    """E as MLM on the batch's text packed into ``pack_width`` rows: a fraction t ~ U(0.05, 1] of each row's
    characters become [MASK]; mean CE over the masks. It runs as a round that deletes and inserts nothing, so
    it goes through the (DDP-wrapped) forward like every other term."""
    c = model.config
    rows = pack_rows(labels.cpu(), c.bos_token_id, schedule.pack_width)  # (R, W)
    valid = rows != -100
    t = torch.rand(rows.shape[0], 1, generator=generator).clamp(min=0.05)
    masked = valid & (rows != c.bos_token_id) & (torch.rand(rows.shape, generator=generator) < t)
    ids = torch.where(masked, c.mask_token_id, rows.clamp(min=0)).masked_fill(~valid, c.pad_token_id)
    none = torch.zeros(rows.shape[0], device=model.device)
    out = model(ids.to(model.device), valid.long().to(model.device), edit=none, num_insertions=none.long())
    width = out.logits.shape[1]  # trailing padding is trimmed when no row fills the width
    masked, rows = masked[:, :width].to(model.device), rows[:, :width].to(model.device)
    return F.cross_entropy(out.logits[masked].float(), rows[masked])


def per_character_loss(model: MergeForMaskedRefinement, inputs: dict) -> torch.Tensor:
    """The baseline corrector (MacBERT4CSC recipe): E reads the unmasked draft (same length as its target)
    and predicts the target character at every position; mean CE over the characters."""
    valid = inputs["attention_mask"].bool()
    none = torch.zeros(valid.shape[0], device=valid.device)
    out = model(inputs["input_ids"], valid.long(), edit=none, num_insertions=none.long())
    scored = valid & (inputs["input_ids"] != model.config.bos_token_id)
    return F.cross_entropy(out.logits[scored].float(), inputs["labels"][scored])


def aligned_loss(model: MergeForMaskedRefinement, inputs: dict, schedule: MergeSchedule, step: int) -> dict:
    """The aligned recipe's step: MLM alone in stage 1; then one teacher-forced round on the edit scripts (or
    the per-character objective) + λ_mlm · MLM."""
    generator = schedule.generator(step)
    mlm = mlm_loss(model, inputs["labels"], schedule, generator)
    if schedule.stage(step) == 1:
        return {"loss": mlm, "loss_mlm": mlm.detach()}
    if schedule.objective == "per_character":
        loss = per_character_loss(model, inputs)
        return {"loss": loss + schedule.lambda_mlm * mlm, "loss_recon": loss.detach(), "loss_mlm": mlm.detach()}
    out = model(inputs["input_ids"], inputs["attention_mask"], labels=inputs["labels"],
                delete_labels=inputs["delete_labels"], insert_labels=inputs["insert_labels"])
    logs = {name: getattr(out, name).detach() for name in ("loss_recon", "loss_gate", "loss_comp", "loss_count")}
    deletable = inputs["attention_mask"].bool() & (inputs["input_ids"] != model.config.bos_token_id)
    predicted = (out.delete_prob > model.config.delete_threshold) & deletable
    wrong = inputs["delete_labels"].bool() & deletable
    logs["detect_precision"] = (predicted & wrong).sum() / predicted.sum().clamp(min=1)
    logs["detect_recall"] = (predicted & wrong).sum() / wrong.sum().clamp(min=1)
    logs["gate_rate"] = out.gate.detach().mean()
    return {"loss": out.loss + schedule.lambda_mlm * mlm, "loss_mlm": mlm.detach(), **logs}


def unrolled_loss(model: MergeForMaskedRefinement, inputs: dict, schedule: MergeSchedule, step: int) -> dict:
    """The straight-through recipe's step (M7): L_train ~ U(1, L) rounds, each M6 term averaged over rounds, one graph over all (or the last k) rounds."""
    generator = schedule.generator(step)
    stage = schedule.stage(step)
    if stage == 1:
        mlm = mlm_loss(model, inputs["labels"], schedule, generator)
        return {"loss": mlm, "loss_mlm": mlm.detach()}
    rounds = schedule.unrolled_rounds(step)
    tau_gate, tau_del = schedule.tau_gate(step, model.config), schedule.tau_del(step, model.config)
    labels = inputs["labels"]
    target_ids, target_valid = labels.clamp(min=0), labels != -100
    ids, valid = inputs["input_ids"], inputs["attention_mask"].bool()
    edit = inputs["is_edit"].float() if stage == 2 else None
    prev_logits = prev_hidden = None
    logs: dict[str, torch.Tensor] = defaultdict(float)
    for round_index in range(rounds):
        keep_graph = schedule.bptt_rounds == 0 or round_index >= rounds - schedule.bptt_rounds
        with torch.set_grad_enabled(keep_graph and torch.is_grad_enabled()):
            out = model(ids, valid.long(), labels=labels, prev_logits=prev_logits, prev_hidden=prev_hidden,
                        round_index=round_index, edit=edit, tau_gate=tau_gate, tau_del=tau_del)
        for name in ("loss", "loss_recon", "loss_gate", "loss_comp", "loss_ins", "loss_count"):
            value = getattr(out, name)
            logs[name] = logs[name] + (value if keep_graph else value.detach()) / rounds
        logs["gate_rate"] = logs["gate_rate"] + out.gate.detach().mean() / rounds
        logs["deleted_per_row"] = logs["deleted_per_row"] + out.deletions.detach().sum(-1).mean() / rounds
        logs["inserted_per_row"] = logs["inserted_per_row"] + out.insert_counts.detach().sum(-1).mean() / rounds
        if torch.rand((), generator=generator) < schedule.teacher_forcing(step):
            ids, valid = target_ids.masked_fill(~target_valid, model.config.pad_token_id), target_valid
        else:
            best = out.logits.detach().argmax(-1)
            ids, valid = torch.where(out.mask_positions, best, out.fused_ids), out.attention_mask.bool()
        prev_logits = fit_width(out.logits.detach(), ids.shape[1])
        prev_hidden = fit_width(out.hidden_states.detach(), ids.shape[1])
    logs["rounds"] = torch.tensor(float(rounds))
    return dict(logs)


class ThroughWrapper:
    """The model as ``unrolled_loss`` sees it under accelerate: calls go through the DDP wrapper, so every
    round's gradients are all-reduced across processes; attributes (``config``, ``device``) come from the bare
    model. Calling the unwrapped model instead trains each rank on its own gradients, silently (H6)."""

    def __init__(self, wrapped: torch.nn.Module, model: MergeForMaskedRefinement):
        self.wrapped, self.model = wrapped, model

    def __call__(self, *args, **kwargs):
        return self.wrapped(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


class MergeTrainer(Trainer):
    """``Trainer`` whose ``compute_loss`` unrolls MERGE rounds under the step's schedule (M7, H6)."""

    def __init__(self, *args, schedule: MergeSchedule, **kwargs):
        super().__init__(*args, **kwargs)
        self.schedule = schedule
        self.metrics = WindowedMetrics("merge/", extras=self.schedule_values).install(self)

    def schedule_values(self, step: int) -> dict[str, float]:
        config = self.accelerator.unwrap_model(self.model).config
        if self.schedule.recipe == "aligned":  # no temperatures, no unrolled rounds: only the stage moves
            return {"merge/stage": self.schedule.stage(step)}
        return {"merge/stage": self.schedule.stage(step), "merge/tau_gate": self.schedule.tau_gate(step, config),
                "merge/tau_del": self.schedule.tau_del(step, config),
                "merge/teacher_forcing": self.schedule.teacher_forcing(step)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        step = self.state.global_step
        bare = self.accelerator.unwrap_model(model)
        stage = self.schedule.stage(step)
        if self.schedule.recipe == "aligned":  # supervised heads learn from the start: only stage 1 is staged
            apply_freezing(bare, 1 if stage == 1 else 3)
            terms = aligned_loss(ThroughWrapper(model, bare), inputs, self.schedule, step)
        else:
            apply_freezing(bare, stage)
            terms = unrolled_loss(ThroughWrapper(model, bare), inputs, self.schedule, step)
        for name, value in terms.items():
            if name != "loss":
                self.metrics.add(name, value.detach() if torch.is_tensor(value) else value)
        self.metrics.step_done()
        return (terms["loss"], terms) if return_outputs else terms["loss"]


# -- the recipe ----------------------------------------------------------------------------------------------------
def merge_config(preset: str, tokenizer, **variants) -> MergeConfig:
    """A MERGE whose width matches the AR ``preset`` and whose E + gap encoder have the preset's layer count,
    so the parameter count matches the AR model's (+ the small Picker/Inserter/Gate heads)."""
    if preset not in AR_PRESETS:
        raise ValueError(f"preset must be one of {sorted(AR_PRESETS)}, got {preset!r}")
    ar = AR_PRESETS[preset]
    return MergeConfig(vocab_size=len(tokenizer), hidden_size=ar["hidden_size"],
                       num_hidden_layers=max(1, ar["num_hidden_layers"] - 1), num_gap_layers=1,
                       intermediate_size=ar["intermediate_size"], num_attention_heads=ar["num_attention_heads"],
                       num_key_value_heads=ar["num_key_value_heads"], pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       mask_token_id=tokenizer.mask_token_id, **variants)


def init_filler_from_ar(model: MergeForMaskedRefinement, ar) -> None:
    """Copy a causal Qwen2's token embeddings (hence the tied MLM head), its first E layers and its final norm
    into the filler; the layers then run without the causal mask (the model reads shifted logits, as the AR
    does) and the mask-ratio conditioning starts at zero so the AR's states are E's at step 0. ``ValueError``
    when the shapes differ (another tokenizer or preset)."""
    layers = model.encoder.layers
    pairs = [(model.embed_tokens, ar.get_input_embeddings()), (model.encoder.norm, ar.model.norm),
             *zip(layers, ar.model.layers[:len(layers)])]
    if len(ar.model.layers) < len(layers):
        raise ValueError(f"filler_init: the AR has {len(ar.model.layers)} layers, the filler needs {len(layers)}")
    for ours, theirs in pairs:
        state = theirs.state_dict()
        shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        if shapes != {k: tuple(v.shape) for k, v in state.items()}:
            raise ValueError("filler_init: the AR run's shapes differ from the filler's (train it with the same "
                             "tokenizer and preset)")
        ours.load_state_dict(state)
    nn.init.zeros_(model.mask_ratio_proj.weight)
    nn.init.zeros_(model.mask_ratio_proj.bias)


def schedule_for(config: MergeTrainConfig, training: TrainingArguments) -> MergeSchedule:
    steps = training.max_steps
    return MergeSchedule(rounds=config.rounds, stage1_steps=round(config.stage1 * steps),
                         stage2_steps=round(config.stage2 * steps),
                         teacher_forcing_steps=round(config.teacher_forcing * steps),
                         anneal_steps=max(1, round(config.anneal * steps)), bptt_rounds=config.bptt_rounds,
                         seed=training.seed, recipe=config.recipe, objective=config.objective,
                         lambda_mlm=config.lambda_mlm, pack_width=config.pack_width)


def typo_channel(config: MergeTrainConfig) -> TypoNoise:
    """The aligned recipe's typo noise (M4): ``clean_fraction``, ``typo_frequency_power``, ``typo_fuzzy``."""
    return TypoNoise(clean_fraction=config.clean_fraction, frequency_power=config.typo_frequency_power,
                     fuzzy=config.typo_fuzzy)


def training_pairs(config: MergeTrainConfig, split, tokenizer, seed: int):
    """The recipe's (draft, target) pairs of ``split``."""
    if config.recipe == "aligned":
        return make_aligned_pairs(split, tokenizer, max_chars=config.max_chars, edit_fraction=config.edit_fraction,
                                  noise=typo_channel(config), seed=seed, objective=config.objective)
    return make_pairs(split, tokenizer, max_chars=config.max_chars, edit_fraction=config.edit_fraction,
                      max_rate=config.max_corruption, seed=seed)


def build_trainer(config: MergeTrainConfig, training: TrainingArguments, run_dir, tokenizer,
                  callbacks=()) -> MergeTrainer:
    """The model, the pairs and the ``MergeTrainer`` of ``genlab train merge`` (tests add callbacks)."""
    with main_process_first():  # under accelerate/torchrun: built once, the other ranks read the cache
        pairs = training_pairs(config, load_corpus(config.data)["train"], tokenizer, training.seed)
    set_seed(training.seed)
    model = MergeForMaskedRefinement(merge_config(config.preset, tokenizer, **config.variants(),
                                                  shifted_logits=config.filler_init is not None))
    if config.filler_init is not None:
        init_filler_from_ar(model, AutoModelForCausalLM.from_pretrained(config.filler_init))
    # Under DDP: frozen stages and the gate paths leave weights unused in some steps, so DDP must look for
    # them (find_unused_parameters=False and static_graph=True both raise at the first stage change).
    arguments = finalize_training_arguments(training, run_dir, remove_unused_columns=False,
                                            ddp_find_unused_parameters=True)
    return MergeTrainer(model=model, args=arguments, train_dataset=pairs, data_collator=collate,
                        callbacks=[TimeBudgetCallback(config.budget), *callbacks],
                        schedule=schedule_for(config, training))


def train_merge(config: MergeTrainConfig, training: TrainingArguments | None = None,
                callbacks: Sequence[TrainerCallback] = ()) -> RunDir:
    """Train (or resume) MERGE, export the run directory."""
    training = training or default_training_arguments(TRAINING_DEFAULTS)
    run_dir = prepare_run_dir(config.run_dir)
    tokenizer = resolve_tokenizer(config.tokenizer)
    trainer = build_trainer(config, training, run_dir, tokenizer, callbacks)
    model, schedule = trainer.model, trainer.schedule
    resumed_from = resume_checkpoint(config, run_dir)
    result = run_training(trainer, resumed_from)
    for param in model.parameters():
        param.requires_grad_(True)
    manifest = {
        "system": "merge", "preset": config.preset, "data": config.data, "steps": trainer.state.global_step,
        "train_loss": result.training_loss, "parameters": sum(p.numel() for p in model.parameters()),
        "schedule": asdict(schedule), "max_chars": config.max_chars, "seed": training.seed,
        "resumed_from": resumed_from, "filler_init": config.filler_init, "variants": {k: getattr(model.config, k) for k in config.variants()},
        "typo_noise": asdict(typo_channel(config)) if config.recipe == "aligned" else None,
        "datasets": corpus_sources(config.data),
        "pipeline_tag": "text-generation", "tags": ["non-autoregressive", "text-editing", "masked-refinement"],
        "usage_snippet": usage_snippet(str(run_dir)),
    }

    export_model_run(run_dir, trainer.model, tokenizer, manifest)
    announce(f"merge/{config.preset}: {trainer.state.global_step} steps → {run_dir}")
    return RunDir(run_dir, manifest)


def usage_snippet(model_id: str) -> str:
    """The card's usage snippet: remote-code load, then edit and gen mode (M8)."""
    return (f"from transformers import AutoModel, AutoTokenizer\n\n"
            f"model = AutoModel.from_pretrained({model_id!r}, trust_remote_code=True)\n"
            f"tokenizer = AutoTokenizer.from_pretrained({model_id!r}, trust_remote_code=True)\n"
            f"batch = tokenizer([\"今天天汽很好，我们去公园散布。\"], return_tensors=\"pt\")\n"
            f"out = model.generate(**batch, mode=\"edit\", return_dict_in_generate=True)\n"
            f"print(tokenizer.batch_decode(out.sequences, skip_special_tokens=True), out.rounds.tolist())\n"
            f"prompt = tokenizer([\"今天\"], return_tensors=\"pt\")\n"
            f"sequences = model.generate(**prompt, mode=\"gen\", max_new_tokens=32)\n"
            f"print(tokenizer.batch_decode(sequences, skip_special_tokens=True))\n")


def _load(run_dir: str):
    """A MERGE run's model and tokenizer; ``ValueError`` naming the system of any other run."""
    system = read_manifest(run_dir).get("system")
    if system != "merge":
        raise ValueError(f"{run_dir} is a {system!r} run; MERGE editing needs a MERGE run (genlab train merge)")
    return AutoModel.from_pretrained(run_dir).eval(), load_tokenizer(run_dir)


def refine_texts(model, tokenizer, texts: list[str], **generate_kwargs) -> list[str]:
    """Tokenise (``<s>`` + chars, padded), ``generate``, decode without specials."""
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], **generate_kwargs)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def generate_texts(run_dir: str, prompts: list[str], max_new_tokens: int, greedy: bool) -> list[str]:
    """`genlab generate --model RUN_DIR PROMPT…`: gen mode from each prompt (empty: unconditional)."""
    model, tokenizer = _load(run_dir)
    return refine_texts(model, tokenizer, prompts, mode="gen", max_new_tokens=max_new_tokens)


def edit_texts(run_dir: str, texts: list[str], rounds: int | None = None, detector: str = "picker",
               fill: str = "free", threshold: float | None = None, lexicon_weight: float | None = None) -> list[str]:
    """`genlab edit --model RUN_DIR TEXT…`: edit mode; one repaired text per input. ``detector``: what finds the
    wrong characters (``generate(detector=…)``); ``fill``: ``free``, ``confusion`` (a wrong character becomes
    itself or one of its confusion set), ``lexicon`` (the same, with a word-list prior) or ``fuzzy`` (the prior over
    a wider confusion set, with fuzzy pinyin): see
    ``genlab.spelling.fill_rule``, with ``lexicon_weight``; ``threshold``: the deletion
    threshold (default: the model's ``delete_threshold``), e.g. the one `genlab bench merge` chose."""
    model, tokenizer = _load(run_dir)
    if threshold is not None:
        if not 0 <= threshold <= 1:
            raise ValueError(f"--threshold must be in [0, 1], got {threshold}")
        model.config.delete_threshold = threshold
    kwargs = {"detector": detector, **fill_rule(tokenizer, fill, lexicon_weight)}
    if rounds is not None:
        kwargs["max_rounds"] = rounds
    return refine_texts(model, tokenizer, texts, mode="edit", **kwargs)
