"""`genlab train merge`: MergeTrainer — unrolled MERGE rounds with staged freezing and annealed temperatures (M7).

Data (from the corpus): edit pairs (a sentence corrupted by character deletions, insertions, substitutions and
swaps at a sampled rate → the sentence) and generation pairs (empty or a short prompt → the sentence), each
``<s>`` + characters, at most ``--max-chars`` characters.

Training (SPEC M7, seed 000 §2 and §5): every schedule is a pure function of ``state.global_step`` so that
``resume_from_checkpoint`` continues exactly —

- stage 1 (< ``stage1_steps``): E alone as full-mask MLM (a fraction t ~ U(0, 1] of the target masked);
- stage 2 (< ``stage2_steps``): + Mask-Picker/Mask-Inserter, the gate forced by the pair (edit → 1, gen → 0);
- stage 3: + Gate (round 0 Generate, then the Gate decides);
- L_train ~ U(1, ``rounds``) per step, unrolled with one backward over all rounds (``bptt_rounds`` keeps the
  graph of only the last k rounds: truncated BPTT);
- teacher forcing: the next round's input is Y* with probability 1 until ``teacher_forcing_steps``, 0.5 after;
- τ_gate and τ_del annealed linearly from the config's ``tau_gate_start``/``tau_del_start`` (2) to
  ``tau_gate_end``/``tau_del_end`` (0.2) over ``anneal_steps`` — the model config is their one source.

Each M6 loss term and the gate/deletion/insertion statistics are logged through the Trainer.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import datasets
import torch
from transformers import AutoModel, Trainer, TrainingArguments, set_seed

from ..configuration_merge import GATES, INSERTERS, PICKERS, POSITIONS, MergeConfig
from ..data import corpus_sources, load_corpus
from ..distributed import main_process_first
from ..generation_refinement import fit_width
from ..modeling_merge import MergeForMaskedRefinement
from ..presets import AR_PRESETS
from ..runs import RunDir, export_model_run, prepare_run_dir
from ..timing import steps_for_budget
from ..tokenization import FIRST_ORDINARY_ID, default_tokenizer, load_tokenizer, resolve_tokenizer
from .callbacks import TimeBudgetCallback, WindowedMetrics
from .common import (TrainConfig, announce, check_choice, check_positive, default_training_arguments,
                     finalize_training_arguments, resume_checkpoint)

FILLER_MODULES = ("embed_tokens", "mask_ratio_proj", "encoder", "lm_head")
TRAINING_DEFAULTS = dict(max_steps=2000, learning_rate=3e-4)


@dataclass
class MergeTrainConfig(TrainConfig):
    """`genlab train merge`: MERGE's options besides `TrainingArguments` (schedule fractions of ``max_steps``)."""

    run_dir: str = field(default="runs/merge-tiny", metadata={"help": "where the checkpoint and logs go"})
    preset: str = field(default="tiny", metadata={"choices": sorted(AR_PRESETS),
                                                  "help": "width/depth matched to this AR preset"})
    rounds: int = field(default=3, metadata={"help": "L: unrolled training rounds (U(1, L))"})
    bptt_rounds: int = field(default=0, metadata={"help": "truncated BPTT: keep the last k rounds' graph"})
    max_chars: int = field(default=64, metadata={"help": "longest sentence, in characters"})
    edit_fraction: float = field(default=0.5, metadata={"help": "share of edit pairs (the rest: generation pairs)"})
    max_corruption: float = field(default=0.2, metadata={"help": "corruption rate ~ U(0.05, this)"})
    stage1: float = field(default=0.2, metadata={"help": "fraction of max-steps in stage 1 (E alone)"})
    stage2: float = field(default=0.5, metadata={"help": "fraction of max-steps before the Gate trains"})
    teacher_forcing: float = field(default=0.4, metadata={"help": "fraction of max-steps fully teacher-forced"})
    anneal: float = field(default=0.6, metadata={"help": "fraction of max-steps to anneal τ 2 → 0.2"})
    gate: str = field(default="features", metadata={"choices": list(GATES)})
    picker: str = field(default="bottomk", metadata={"choices": list(PICKERS)})
    inserter: str = field(default="multinomial", metadata={"choices": list(INSERTERS)})
    positions: str = field(default="relative", metadata={"choices": list(POSITIONS)})

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "preset", AR_PRESETS)
        check_positive(self, "rounds", "max_chars")

    def variants(self) -> dict[str, str]:
        """The M9 switches, as ``MergeConfig`` fields."""
        return dict(gate=self.gate, picker=self.picker, inserter=self.inserter, positions=self.positions)


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


# -- data -----------------------------------------------------------------------------------------------------------
def corrupt(ids: list[int], rate: float, rng: random.Random, vocab_size: int) -> list[int]:
    """Character noise at ``rate`` per character: deletion, insertion, substitution or swap with the next."""
    out, i = [], 0
    while i < len(ids):
        if rng.random() >= rate:
            out.append(ids[i])
            i += 1
            continue
        op = rng.randrange(4)
        if op == 0:  # deletion
            i += 1
        elif op == 1:  # insertion
            out.extend([rng.randrange(FIRST_ORDINARY_ID, vocab_size), ids[i]])
            i += 1
        elif op == 2:  # substitution
            out.append(rng.randrange(FIRST_ORDINARY_ID, vocab_size))
            i += 1
        else:  # swap
            out.extend(ids[i:i + 2][::-1])
            i += 2
    return out if out != ids or not ids else out[:-1]  # a draft always differs from its target


def make_pairs(split: datasets.Dataset, tokenizer, *, max_chars: int, edit_fraction: float, max_rate: float,
               seed: int) -> datasets.Dataset:
    """(draft, target) pairs: ``draft_ids`` and ``labels`` (both ``<s>`` + chars) and ``is_edit``."""
    vocab_size, bos = len(tokenizer), tokenizer.bos_token_id

    def build(batch, indices):
        chars = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        drafts, targets, kinds = [], [], []
        for index, ids in zip(indices, chars):
            ids = ids[:max_chars]
            rng = random.Random(seed * 1_000_003 + index)
            is_edit = rng.random() < edit_fraction and len(ids) >= 2
            if is_edit:
                draft = corrupt(ids, rng.uniform(0.05, max_rate), rng, vocab_size)
            else:
                draft = ids[: rng.choice([0, 0, rng.randint(1, min(4, len(ids)))])]
            drafts.append([bos] + draft)
            targets.append([bos] + ids)
            kinds.append(is_edit)
        return {"draft_ids": drafts, "labels": targets, "is_edit": kinds}

    return split.map(build, batched=True, with_indices=True, remove_columns=split.column_names,
                     desc="edit/generation pairs")


def collate(features: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    def pad(rows, value):
        width = max(map(len, rows))
        return torch.tensor([row + [value] * (width - len(row)) for row in rows])

    drafts = pad([f["draft_ids"] for f in features], pad_id)
    return {"input_ids": drafts, "attention_mask": (drafts != pad_id).long(),
            "labels": pad([f["labels"] for f in features], -100),
            "is_edit": torch.tensor([f["is_edit"] for f in features], dtype=torch.bool)}


# -- the unrolled training forward ---------------------------------------------------------------------------------
def masked_lm_loss(model: MergeForMaskedRefinement, labels: torch.Tensor, generator: torch.Generator) -> dict:
    """Stage 1: E as full-mask MLM — a fraction t ~ U(0, 1] of each target's characters replaced by [MASK]."""
    c = model.config
    valid = labels != -100
    maskable = valid & (labels != c.bos_token_id)
    t = torch.rand(labels.shape[0], 1, generator=generator).clamp(min=0.05)
    masked = maskable & (torch.rand(labels.shape, generator=generator) < t)
    ids = torch.where(masked, c.mask_token_id, labels.clamp(min=0)).masked_fill(~valid, c.pad_token_id)
    out = model(ids.to(model.device), valid.long().to(model.device), labels=labels.to(model.device),
                edit=torch.zeros(labels.shape[0], device=model.device),
                num_insertions=torch.zeros(labels.shape[0], dtype=torch.long, device=model.device))
    return {"loss": out.loss_recon, "loss_recon": out.loss_recon.detach(), "mask_ratio": out.mask_ratio.mean()}


def unrolled_loss(model: MergeForMaskedRefinement, inputs: dict, schedule: MergeSchedule, step: int) -> dict:
    """M7: L_train ~ U(1, L) rounds, each M6 term averaged over rounds, one graph over all (or the last k) rounds."""
    generator = schedule.generator(step)
    stage = schedule.stage(step)
    if stage == 1:
        return masked_lm_loss(model, inputs["labels"], generator)
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
        return {"merge/stage": self.schedule.stage(step), "merge/tau_gate": self.schedule.tau_gate(step, config),
                "merge/tau_del": self.schedule.tau_del(step, config),
                "merge/teacher_forcing": self.schedule.teacher_forcing(step)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        step = self.state.global_step
        bare = self.accelerator.unwrap_model(model)
        apply_freezing(bare, self.schedule.stage(step))
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


def schedule_for(config: MergeTrainConfig, training: TrainingArguments) -> MergeSchedule:
    steps = training.max_steps
    return MergeSchedule(rounds=config.rounds, stage1_steps=round(config.stage1 * steps),
                         stage2_steps=round(config.stage2 * steps),
                         teacher_forcing_steps=round(config.teacher_forcing * steps),
                         anneal_steps=max(1, round(config.anneal * steps)), bptt_rounds=config.bptt_rounds,
                         seed=training.seed)


def build_trainer(config: MergeTrainConfig, training: TrainingArguments, run_dir, tokenizer,
                  callbacks=()) -> MergeTrainer:
    """The model, the pairs and the ``MergeTrainer`` of ``genlab train merge`` (tests add callbacks)."""
    with main_process_first():  # under accelerate/torchrun: built once, the other ranks read the cache
        corpus = load_corpus(config.data)
        pairs = make_pairs(corpus["train"], tokenizer, max_chars=config.max_chars, edit_fraction=config.edit_fraction,
                           max_rate=config.max_corruption, seed=training.seed)
    set_seed(training.seed)
    model = MergeForMaskedRefinement(merge_config(config.preset, tokenizer, **config.variants()))
    # Under DDP: frozen stages and the gate paths leave weights unused in some steps, so DDP must look for
    # them (find_unused_parameters=False and static_graph=True both raise at the first stage change).
    arguments = finalize_training_arguments(training, run_dir, remove_unused_columns=False,
                                            ddp_find_unused_parameters=True)
    return MergeTrainer(model=model, args=arguments, train_dataset=pairs, data_collator=collate,
                        callbacks=[TimeBudgetCallback(config.budget), *callbacks],
                        schedule=schedule_for(config, training))


def steps_for_merge_budget(budget: float, config: MergeTrainConfig, batch_size: int = 16) -> int:
    """Steps that fit ``budget``: one timed stage-3 step (forward over the unrolled rounds, backward, AdamW)."""
    tokenizer = default_tokenizer()
    model = MergeForMaskedRefinement(merge_config(config.preset, tokenizer, **config.variants()))
    sentences = load_corpus("all")["train"].select(range(256))
    pairs = make_pairs(sentences, tokenizer, max_chars=config.max_chars, edit_fraction=0.5, max_rate=0.2, seed=0)
    batch = collate([pairs[i] for i in range(batch_size)])
    schedule = MergeSchedule(rounds=config.rounds, stage1_steps=0, stage2_steps=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        unrolled_loss(model, batch, schedule, 0)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return steps_for_budget(step, budget)


def train_merge(config: MergeTrainConfig, training: TrainingArguments | None = None) -> RunDir:
    """Train (or resume) MERGE, export the run directory."""
    training = training or default_training_arguments(TRAINING_DEFAULTS)
    run_dir = prepare_run_dir(config.run_dir)
    tokenizer = resolve_tokenizer(config.tokenizer)
    trainer = build_trainer(config, training, run_dir, tokenizer)
    model, schedule = trainer.model, trainer.schedule
    resumed_from = resume_checkpoint(config, run_dir)
    result = trainer.train(resume_from_checkpoint=resumed_from)
    for param in model.parameters():
        param.requires_grad_(True)
    manifest = {
        "system": "merge", "preset": config.preset, "data": config.data, "steps": trainer.state.global_step,
        "train_loss": result.training_loss, "parameters": sum(p.numel() for p in model.parameters()),
        "schedule": asdict(schedule), "max_chars": config.max_chars, "seed": training.seed,
        "resumed_from": resumed_from, "variants": {k: getattr(model.config, k) for k in config.variants()},
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
            f"tokenizer = AutoTokenizer.from_pretrained({model_id!r})\n"
            f"batch = tokenizer([\"今天天汽很好，我们去公园散布。\"], return_tensors=\"pt\")\n"
            f"out = model.generate(**batch, mode=\"edit\", return_dict_in_generate=True)\n"
            f"print(tokenizer.batch_decode(out.sequences, skip_special_tokens=True), out.rounds.tolist())\n"
            f"prompt = tokenizer([\"今天\"], return_tensors=\"pt\")\n"
            f"sequences = model.generate(**prompt, mode=\"gen\", max_new_tokens=32)\n"
            f"print(tokenizer.batch_decode(sequences, skip_special_tokens=True))\n")


def _load(run_dir: str):
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


def edit_texts(run_dir: str, texts: list[str], rounds: int | None = None) -> list[str]:
    """`genlab edit --model RUN_DIR TEXT…`: edit mode; one repaired text per input."""
    model, tokenizer = _load(run_dir)
    kwargs = {"max_rounds": rounds} if rounds else {}
    return refine_texts(model, tokenizer, texts, mode="edit", **kwargs)
