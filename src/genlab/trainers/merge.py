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
- τ_gate and τ_del annealed linearly from 2 to 0.2 over ``anneal_steps``.

Each M6 loss term and the gate/deletion/insertion statistics are logged through the Trainer.
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import torch
from transformers import Trainer, set_seed

from ..configuration_merge import GATES, INSERTERS, PICKERS, POSITIONS, MergeConfig
from ..data import corpus_sources, load_corpus
from ..distributed import main_process_first, sum_across_processes
from ..generation_refinement import fit_width
from ..modeling_merge import MergeForMaskedRefinement
from ..presets import AR_PRESETS
from ..runs import export_model_run, prepare_run_dir
from ..tokenization import resolve_tokenizer
from .common import TimeBudgetCallback, add_common_arguments, announce, positive_int, resume_checkpoint, training_arguments

FILLER_MODULES = ("embed_tokens", "mask_ratio_proj", "encoder", "lm_head")
FIRST_CHAR_ID = 22  # ids below are specials and reserved markers


# -- schedules (pure functions of the global step) ---------------------------------------------------------------
@dataclass(frozen=True)
class MergeSchedule:
    rounds: int = 3
    stage1_steps: int = 200
    stage2_steps: int = 500
    teacher_forcing_steps: int = 400
    anneal_steps: int = 1000
    tau_start: float = 2.0
    tau_end: float = 0.2
    bptt_rounds: int = 0  # 0: backprop through every round
    seed: int = 0

    def stage(self, step: int) -> int:
        return 1 if step < self.stage1_steps else 2 if step < self.stage2_steps else 3

    def tau(self, step: int) -> float:
        """τ_gate = τ_del, linear tau_start → tau_end over anneal_steps, then constant."""
        frac = min(1.0, step / max(1, self.anneal_steps))
        return self.tau_start + (self.tau_end - self.tau_start) * frac

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
            out.extend([rng.randrange(FIRST_CHAR_ID, vocab_size), ids[i]])
            i += 1
        elif op == 2:  # substitution
            out.append(rng.randrange(FIRST_CHAR_ID, vocab_size))
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
    tau = schedule.tau(step)
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
                        round_index=round_index, edit=edit, tau_gate=tau, tau_del=tau)
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
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        step = self.state.global_step
        bare = self.accelerator.unwrap_model(model)
        apply_freezing(bare, self.schedule.stage(step))
        terms = unrolled_loss(ThroughWrapper(model, bare), inputs, self.schedule, step)
        for name, value in terms.items():
            self._sums[name] += float(value.detach() if torch.is_tensor(value) else value)
        self._count += 1
        return (terms["loss"], terms) if return_outputs else terms["loss"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._count and "loss" in logs:
            step = self.state.global_step
            sums = sum_across_processes({**self._sums, "batches": self._count})  # the global batch, not rank 0's
            batches = sums.pop("batches")
            logs.update({f"merge/{k}": v / batches for k, v in sums.items() if k != "loss"})
            logs.update({"merge/stage": self.schedule.stage(step), "merge/tau": self.schedule.tau(step),
                         "merge/teacher_forcing": self.schedule.teacher_forcing(step)})
            self._sums.clear()
            self._count = 0
        super().log(logs, start_time)


# -- command line -----------------------------------------------------------------------------------------------
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_run_dir="runs/merge-tiny", max_steps=2000, batch_size=16, lr=3e-4)
    parser.add_argument("--preset", default="tiny", choices=sorted(AR_PRESETS),
                        help="width/depth matched to this AR preset")
    parser.add_argument("--rounds", type=positive_int, default=3, help="L: unrolled training rounds (U(1, L))")
    parser.add_argument("--bptt-rounds", type=int, default=0, help="truncated BPTT: keep the last k rounds' graph")
    parser.add_argument("--max-chars", type=positive_int, default=64)
    parser.add_argument("--edit-fraction", type=float, default=0.5)
    parser.add_argument("--max-corruption", type=float, default=0.2, help="corruption rate ~ U(0.05, this)")
    parser.add_argument("--stage1", type=float, default=0.2, help="fraction of max-steps in stage 1 (E alone)")
    parser.add_argument("--stage2", type=float, default=0.5, help="fraction of max-steps before the Gate trains")
    parser.add_argument("--teacher-forcing", type=float, default=0.4, help="fraction of max-steps fully teacher-forced")
    parser.add_argument("--anneal", type=float, default=0.6, help="fraction of max-steps to anneal τ 2 → 0.2")
    parser.add_argument("--gate", default="features", choices=GATES)
    parser.add_argument("--picker", default="bottomk", choices=PICKERS)
    parser.add_argument("--inserter", default="multinomial", choices=INSERTERS)
    parser.add_argument("--positions", default="relative", choices=POSITIONS)


def schedule_from_args(args: argparse.Namespace) -> MergeSchedule:
    steps = args.max_steps
    return MergeSchedule(rounds=args.rounds, stage1_steps=round(args.stage1 * steps),
                         stage2_steps=round(args.stage2 * steps),
                         teacher_forcing_steps=round(args.teacher_forcing * steps),
                         anneal_steps=max(1, round(args.anneal * steps)), bptt_rounds=args.bptt_rounds,
                         seed=args.seed)


def build_trainer(args: argparse.Namespace, run_dir: Path, tokenizer, callbacks=()) -> MergeTrainer:
    """The model, the pairs and the ``MergeTrainer`` of ``genlab train merge`` (tests add callbacks)."""
    with main_process_first():  # under accelerate/torchrun: built once, the other ranks read the cache
        corpus = load_corpus(args.data)
        pairs = make_pairs(corpus["train"], tokenizer, max_chars=args.max_chars, edit_fraction=args.edit_fraction,
                           max_rate=args.max_corruption, seed=args.seed)
    set_seed(args.seed)
    model = MergeForMaskedRefinement(merge_config(args.preset, tokenizer, gate=args.gate, picker=args.picker,
                                                  inserter=args.inserter, positions=args.positions))
    # Under DDP: frozen stages and the gate paths leave weights unused in some steps, so DDP must look for
    # them (find_unused_parameters=False and static_graph=True both raise at the first stage change).
    training = training_arguments(args, run_dir, remove_unused_columns=False, ddp_find_unused_parameters=True)
    return MergeTrainer(model=model, args=training,
                        train_dataset=pairs, data_collator=collate,
                        callbacks=[TimeBudgetCallback(args.budget), *callbacks], schedule=schedule_from_args(args))


def run(args: argparse.Namespace) -> dict:
    """Train (or resume) MERGE, export the run directory; returns the manifest."""
    run_dir = prepare_run_dir(args.run_dir)
    tokenizer = resolve_tokenizer(args.tokenizer)
    trainer = build_trainer(args, run_dir, tokenizer)
    model, schedule = trainer.model, trainer.schedule
    resumed_from = resume_checkpoint(args, run_dir)
    result = trainer.train(resume_from_checkpoint=resumed_from)
    for param in model.parameters():
        param.requires_grad_(True)
    manifest = {
        "system": "merge", "preset": args.preset, "data": args.data, "steps": trainer.state.global_step,
        "train_loss": result.training_loss, "parameters": sum(p.numel() for p in model.parameters()),
        "schedule": asdict(schedule), "max_chars": args.max_chars, "seed": args.seed, "resumed_from": resumed_from,
        "variants": {k: getattr(model.config, k) for k in ("gate", "picker", "inserter", "positions")},
        "datasets": corpus_sources(args.data),
        "pipeline_tag": "text-generation", "tags": ["non-autoregressive", "text-editing", "masked-refinement"],
        "usage_snippet": usage_snippet(str(run_dir)),
    }

    export_model_run(run_dir, trainer.model, tokenizer, manifest)
    announce(f"merge/{args.preset}: {trainer.state.global_step} steps → {run_dir}")
    return manifest


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
    from transformers import AutoModel

    from ..tokenization import load_tokenizer

    return AutoModel.from_pretrained(run_dir).eval(), load_tokenizer(run_dir)


def refine_texts(model, tokenizer, texts: list[str], **generate_kwargs) -> list[str]:
    """Tokenise (``<s>`` + chars, padded), ``generate``, decode without specials."""
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], **generate_kwargs)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def generate_cli(args: argparse.Namespace) -> list[str]:
    """`genlab generate --model RUN_DIR PROMPT…`: gen mode from each prompt (empty: unconditional)."""
    model, tokenizer = _load(args.model)
    return refine_texts(model, tokenizer, args.prompts, mode="gen", max_new_tokens=args.max_new_tokens)


def edit_cli(args: argparse.Namespace) -> None:
    """`genlab edit --model RUN_DIR TEXT…`: edit mode; prints one repaired text per line."""
    model, tokenizer = _load(args.model)
    kwargs = {"max_rounds": args.rounds} if args.rounds else {}
    for text in refine_texts(model, tokenizer, args.texts, mode="edit", **kwargs):
        print(text)
