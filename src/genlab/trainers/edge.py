"""`genlab train edge --cloud RUN_DIR`: an edge model distilled from its cloud (SPEC S1, S3).

The edge is a small ``Qwen2ForCausalLM`` (``--preset``, default ``nano``) on the cloud's tokenizer, trained on the
corpus with next-token CE + KL(cloud ‖ edge) per token: the edge learns the cloud's choices, which is what the
acceptance of speculative decoding needs. The run directory is a plain causal-LM checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

from ..data import load_corpus
from ..presets import AR_PRESETS
from ..runs import RunDir, export_model_run, prepare_run_dir
from ..tokenization import resolve_tokenizer
from .ar import build_model, pack_sentences
from .callbacks import TimeBudgetCallback
from .common import (TrainConfig, announce, check_choice, default_training_arguments, finalize_training_arguments,
                     resume_checkpoint)

TRAINING_DEFAULTS = dict(max_steps=1500, learning_rate=3e-3, save_steps=500)


@dataclass
class EdgeTrainConfig(TrainConfig):
    """`genlab train edge`: the edge's options besides `TrainingArguments`."""

    run_dir: str = field(default="runs/speculative-edge-kd", metadata={"help": "where the checkpoint and logs go"})
    cloud: str | None = field(default=None, metadata={"help": "the cloud's run directory (the teacher); required"})
    preset: str = field(default="nano", metadata={"choices": sorted(AR_PRESETS), "help": "edge size"})
    kl_weight: float = field(default=0.7, metadata={"help": "loss = (1 - w)·CE + w·KL(cloud ‖ edge)"})
    block_size: int = field(default=128, metadata={"help": "tokens per packed training block"})

    def __post_init__(self):
        super().__post_init__()
        if self.cloud is None:
            raise ValueError("--cloud is required: the run directory of the cloud model to distil from")
        check_choice(self, "preset", AR_PRESETS)
        if not 0 <= self.kl_weight <= 1:
            raise ValueError(f"--kl-weight must be in [0, 1], got {self.kl_weight}")


class DistillationTrainer(Trainer):
    """Next-token CE + KL(cloud ‖ edge) per token: the edge learns the cloud's choices, which is what acceptance needs."""

    def __init__(self, *args, teacher, kl_weight: float = 0.7, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.kl_weight = teacher.eval(), kl_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=inputs["input_ids"]).logits
        vocab = outputs.logits.shape[-1]
        kl = F.kl_div(outputs.logits.reshape(-1, vocab).log_softmax(-1),
                      teacher_logits.reshape(-1, vocab).log_softmax(-1), log_target=True, reduction="batchmean")
        loss = (1 - self.kl_weight) * outputs.loss + self.kl_weight * kl
        return (loss, outputs) if return_outputs else loss


def train_edge(config: EdgeTrainConfig, training: TrainingArguments | None = None) -> RunDir:
    """Distil (or resume distilling) an edge from ``config.cloud``; export it as a plain causal-LM run."""
    training = training or default_training_arguments(TRAINING_DEFAULTS)
    run_dir = prepare_run_dir(config.run_dir)
    tokenizer = resolve_tokenizer(config.tokenizer)
    blocks = pack_sentences(load_corpus(config.data)["train"], tokenizer, config.block_size)
    teacher = AutoModelForCausalLM.from_pretrained(config.cloud)
    model = build_model(config.preset, tokenizer, training.seed)
    trainer = DistillationTrainer(model=model, args=finalize_training_arguments(training, run_dir),
                                  train_dataset=blocks, data_collator=default_data_collator,
                                  callbacks=[TimeBudgetCallback(config.budget)], teacher=teacher,
                                  kl_weight=config.kl_weight)
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(config, run_dir))
    manifest = {"system": "ar", "preset": config.preset, "distilled_from": str(config.cloud),
                "steps": trainer.state.global_step, "train_loss": result.training_loss, "seed": training.seed,
                "parameters": sum(p.numel() for p in model.parameters()), "budget_s": config.budget}
    export_model_run(run_dir, trainer.model, tokenizer, manifest)
    announce(f"edge/{config.preset}: {trainer.state.global_step} steps distilled from {config.cloud} → {run_dir}")
    return RunDir(run_dir, manifest)
