"""The planner's baseline: an AR Qwen2 of the planner–executor's parameter count trained on p(y | u) (SPEC P4, B).

Same (u, y) pairs as the planner (its run's task), rendered ``u <sep> y </s>`` with the loss on y only; its layers are the
executor's shape, as many as bring it to the planner–executor's parameter count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Trainer, TrainerCallback, TrainingArguments, set_seed

from ..modeling_planner import PlannerExecutorModel
from ..runs import RunDir, export_model_run, prepare_run_dir, read_manifest
from ..tokenization import resolve_tokenizer
from .callbacks import TimeBudgetCallback
from .common import (TrainConfig, announce, default_training_arguments, finalize_training_arguments,
                     run_training)
from .planner_data import run_pairs

TRAINING_DEFAULTS = dict(max_steps=500, learning_rate=1e-3, lr_scheduler_type="constant_with_warmup",
                         logging_steps=25, save_steps=100000)


@dataclass
class PlannerBaselineTrainConfig(TrainConfig):
    """The AR p(y|u) baseline of a planner run."""

    run_dir: str = field(default="runs/bench/planner-ar", metadata={"help": "where the checkpoint goes"})
    planner_run: str | None = field(default=None, metadata={"help": "the planner run whose size and pairs it matches"})

    def __post_init__(self):
        super().__post_init__()
        if self.planner_run is None:
            raise ValueError("planner_run is required: the planner run directory the baseline is matched to")


def ar_pairs(pairs, sep_id: int):
    """``u <sep> y``: labels only on y (its ``</s>`` included)."""
    def join(row):
        ids = row["u_ids"] + [sep_id] + row["y_ids"]
        return {"input_ids": ids, "labels": [-100] * (len(row["u_ids"]) + 1) + row["y_ids"]}

    return pairs.map(join, remove_columns=pairs.column_names)


def ar_collate(features: list[dict]) -> dict[str, torch.Tensor]:
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), width, dtype=torch.long)
    labels = torch.full((len(features), width), -100)
    mask = torch.zeros(len(features), width, dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def ar_config(model: PlannerExecutorModel, target_params: int) -> Qwen2Config:
    """The executor's Qwen2 shape with as many layers as bring the AR model to ``target_params``."""
    stack = model.config.executor
    per_layer = sum(p.numel() for p in model.executor.layers[0].parameters())
    base = model.config.vocab_size * stack["hidden_size"] + stack["hidden_size"]  # tied embedding + final norm
    layers = max(1, round((target_params - base) / per_layer))
    return Qwen2Config(**{**stack, "num_hidden_layers": layers}, vocab_size=model.config.vocab_size,
                       tie_word_embeddings=True, max_position_embeddings=512, pad_token_id=model.config.pad_token_id,
                       bos_token_id=model.config.bos_token_id, eos_token_id=model.config.eos_token_id)


def train_planner_baseline(config: PlannerBaselineTrainConfig, training: TrainingArguments | None = None,
                           callbacks: Sequence[TrainerCallback] = ()) -> RunDir:
    """Train the AR p(y|u) baseline of ``config.planner_run`` (give it the planner's step count)."""
    training = training or default_training_arguments(TRAINING_DEFAULTS)
    planner = PlannerExecutorModel.from_pretrained(config.planner_run)
    planner_manifest = read_manifest(config.planner_run)
    target_params = planner_manifest["parameters"]
    tokenizer = resolve_tokenizer(config.tokenizer)
    pairs = run_pairs(planner_manifest, "train", tokenizer, planner.config)
    set_seed(training.seed)
    ar = Qwen2ForCausalLM(ar_config(planner, target_params))
    run_dir = prepare_run_dir(config.run_dir)
    trainer = Trainer(model=ar, args=finalize_training_arguments(training, run_dir),
                      train_dataset=ar_pairs(pairs, tokenizer.sep_token_id), data_collator=ar_collate,
                      callbacks=[TimeBudgetCallback(config.budget), *callbacks])
    run_training(trainer)
    manifest = {"system": "ar", "role": "planner baseline p(y|u)", "steps": trainer.state.global_step,
                "parameters": sum(p.numel() for p in ar.parameters()), "planner_run": str(config.planner_run)}
    export_model_run(run_dir, ar, tokenizer, manifest)
    announce(f"planner baseline: {trainer.state.global_step} steps → {run_dir}")
    return RunDir(run_dir, manifest)
