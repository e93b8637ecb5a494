"""`genlab train ar`: the autoregressive yardstick — a plain `Qwen2ForCausalLM` trained with `Trainer`.

It is the baseline of every speed ratio, the judge of generative perplexity, the base of concept
compression and the edge/cloud pair of speculative decoding, so it is deliberately standard: sentences
are tokenised (``<s> text </s>``), packed into fixed blocks, and trained with the stock `Trainer`
(resumable from ``RUN_DIR/checkpoints``, seeded, with progress bars). The run directory is a checkpoint
that ``AutoModelForCausalLM.from_pretrained`` loads; its manifest records the validation perplexity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain

import datasets
import torch
from transformers import (AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerBase, Qwen2ForCausalLM, Trainer, TrainerCallback, TrainingArguments,
                          default_data_collator, set_seed)

from ..data import corpus_sources, load_corpus
from ..distributed import main_process_first
from ..presets import AR_PRESETS, qwen2_config
from ..runs import RunDir, export_model_run, prepare_run_dir
from ..tokenization import load_tokenizer, resolve_tokenizer
from .callbacks import TimeBudgetCallback
from .common import (TrainConfig, announce, check_choice, check_positive, default_training_arguments,
                     finalize_training_arguments, resume_checkpoint, run_training)

TRAINING_DEFAULTS = dict(max_steps=2000, learning_rate=1e-3)


@dataclass
class ARTrainConfig(TrainConfig):
    """`genlab train ar`: the yardstick's options besides `TrainingArguments`."""

    run_dir: str = field(default="runs/ar-tiny", metadata={"help": "where the checkpoint and logs go"})
    preset: str = field(default="tiny", metadata={"choices": sorted(AR_PRESETS), "help": "model size"})
    block_size: int = field(default=128, metadata={"help": "tokens per packed training block"})
    eval_blocks: int = field(default=256, metadata={"help": "validation blocks for perplexity"})

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "preset", AR_PRESETS)
        check_positive(self, "block_size", "eval_blocks")


def pack_sentences(split: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, block_size: int) -> datasets.Dataset:
    """Tokenise ``<s> sentence </s>`` and pack consecutive sentences into blocks of ``block_size`` ids."""

    def tokenize_and_pack(batch):
        ids = tokenizer(batch["text"], add_special_tokens=True)["input_ids"]
        stream = list(chain.from_iterable(seq + [tokenizer.eos_token_id] for seq in ids))
        usable = len(stream) // block_size * block_size
        blocks = [stream[i : i + block_size] for i in range(0, usable, block_size)]
        return {"input_ids": blocks, "labels": blocks}

    return split.map(tokenize_and_pack, batched=True, batch_size=2000, remove_columns=split.column_names,
                     desc=f"packing into blocks of {block_size}")


def default_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Greedy, 64 new tokens: the decoding defaults saved as ``generation_config.json`` (SPEC H3)."""
    return GenerationConfig(max_new_tokens=64, do_sample=False, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def build_model(preset: str, tokenizer: PreTrainedTokenizerBase, seed: int) -> Qwen2ForCausalLM:
    set_seed(seed)
    config = qwen2_config(preset, len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = Qwen2ForCausalLM(config)
    model.generation_config = default_generation_config(tokenizer)
    return model


def perplexity(trainer: Trainer, eval_dataset: datasets.Dataset) -> float:
    return math.exp(trainer.evaluate(eval_dataset)["eval_loss"])


@torch.no_grad()
def sample(model, tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int = 48,
           do_sample: bool = True, seed: int = 0) -> list[str]:
    """Continue each prompt (left padding, so the batch does not change any row's result)."""
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=do_sample, top_p=0.9,
                         temperature=0.8 if do_sample else None)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def train_ar(config: ARTrainConfig, training: TrainingArguments | None = None,
             callbacks: Sequence[TrainerCallback] = ()) -> RunDir:
    """Train (or resume), evaluate, export the AR yardstick."""
    training = training or default_training_arguments(TRAINING_DEFAULTS)
    run_dir = prepare_run_dir(config.run_dir)
    with main_process_first():  # under accelerate/torchrun: prepared once, the other ranks read the caches
        tokenizer = resolve_tokenizer(config.tokenizer)
        corpus = load_corpus(config.data)
        train_blocks = pack_sentences(corpus["train"], tokenizer, config.block_size)
        eval_blocks = pack_sentences(corpus["validation"], tokenizer, config.block_size)
    eval_blocks = eval_blocks.select(range(min(config.eval_blocks, len(eval_blocks))))

    model = build_model(config.preset, tokenizer, training.seed)
    trainer = Trainer(
        model=model,
        args=finalize_training_arguments(training, run_dir, ddp_find_unused_parameters=False),  # every weight is used
        train_dataset=train_blocks,
        data_collator=default_data_collator,
        callbacks=[TimeBudgetCallback(config.budget), *callbacks],
    )
    resumed_from = resume_checkpoint(config, run_dir)
    result = run_training(trainer, resumed_from)
    val_ppl = perplexity(trainer, eval_blocks)

    manifest = {
        "system": "ar",
        "preset": config.preset,
        "data": config.data,
        "datasets": corpus_sources(config.data),
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "val_ppl": val_ppl,
        "eval_blocks": len(eval_blocks),
        "block_size": config.block_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": training.seed,
        "resumed_from": resumed_from,
    }

    export_model_run(run_dir, trainer.model, tokenizer, manifest)
    announce(f"ar/{config.preset}: {trainer.state.global_step} steps, validation perplexity {val_ppl:.2f} → {run_dir}")
    return RunDir(run_dir, manifest)


def generate_texts(run_dir: str, prompts: list[str], max_new_tokens: int, greedy: bool) -> list[str]:
    """`genlab generate --model RUN_DIR PROMPT…` for an AR run: prompt + continuation per line."""
    model = AutoModelForCausalLM.from_pretrained(run_dir).eval()
    tokenizer = load_tokenizer(run_dir)
    outputs = sample(model, tokenizer, prompts, max_new_tokens, do_sample=not greedy)
    return [prompt + text for prompt, text in zip(prompts, outputs)]
