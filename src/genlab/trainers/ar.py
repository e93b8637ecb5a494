"""`genlab train ar`: the autoregressive yardstick — a plain `Qwen2ForCausalLM` trained with `Trainer`.

It is the baseline of every speed ratio, the judge of generative perplexity, the base of concept
compression and the edge/cloud pair of speculative decoding, so it is deliberately standard: sentences
are tokenised (``<s> text </s>``), packed into fixed blocks, and trained with the stock `Trainer`
(resumable from ``RUN_DIR/checkpoints``, seeded, with progress bars). The run directory is a checkpoint
that ``AutoModelForCausalLM.from_pretrained`` loads; its manifest records the validation perplexity.
"""

from __future__ import annotations

import argparse
import math
from itertools import chain

import datasets
import torch
from transformers import (GenerationConfig, PreTrainedTokenizerBase, Qwen2ForCausalLM, Trainer,
                          default_data_collator, set_seed)

from ..data import corpus_sources, load_corpus
from ..distributed import main_process_first
from ..presets import AR_PRESETS, qwen2_config
from ..runs import export_model_run, prepare_run_dir
from ..tokenization import resolve_tokenizer
from .common import TimeBudgetCallback, add_common_arguments, announce, resume_checkpoint, training_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_run_dir="runs/ar-tiny", max_steps=2000, batch_size=16, lr=1e-3)
    parser.add_argument("--preset", default="tiny", choices=sorted(AR_PRESETS))
    parser.add_argument("--block-size", type=int, default=128, help="tokens per packed training block")
    parser.add_argument("--eval-blocks", type=int, default=256, help="validation blocks for perplexity")


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


def run(args: argparse.Namespace) -> dict:
    """Train (or resume), evaluate, export; returns the manifest."""
    run_dir = prepare_run_dir(args.run_dir)
    with main_process_first():  # under accelerate/torchrun: prepared once, the other ranks read the caches
        tokenizer = resolve_tokenizer(args.tokenizer)
        corpus = load_corpus(args.data)
        train_blocks = pack_sentences(corpus["train"], tokenizer, args.block_size)
        eval_blocks = pack_sentences(corpus["validation"], tokenizer, args.block_size)
    eval_blocks = eval_blocks.select(range(min(args.eval_blocks, len(eval_blocks))))

    model = build_model(args.preset, tokenizer, args.seed)
    trainer = Trainer(
        model=model,
        args=training_arguments(args, run_dir, ddp_find_unused_parameters=False),  # every weight is used
        train_dataset=train_blocks,
        data_collator=default_data_collator,
        callbacks=[TimeBudgetCallback(args.budget)],
    )
    resumed_from = resume_checkpoint(args, run_dir)
    result = trainer.train(resume_from_checkpoint=resumed_from)
    val_ppl = perplexity(trainer, eval_blocks)

    manifest = {
        "system": "ar",
        "preset": args.preset,
        "data": args.data,
        "datasets": corpus_sources(args.data),
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "val_ppl": val_ppl,
        "block_size": args.block_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": args.seed,
        "resumed_from": resumed_from,
    }

    export_model_run(run_dir, trainer.model, tokenizer, manifest)
    announce(f"ar/{args.preset}: {trainer.state.global_step} steps, validation perplexity {val_ppl:.2f} → {run_dir}")
    return manifest


def generate_cli(args: argparse.Namespace) -> list[str]:
    """`genlab generate --model RUN_DIR PROMPT…` for an AR run: prompt + continuation per line."""
    from transformers import AutoModelForCausalLM

    from ..tokenization import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tokenizer = load_tokenizer(args.model)
    outputs = sample(model, tokenizer, args.prompts, args.max_new_tokens, do_sample=not args.greedy)
    return [prompt + text for prompt, text in zip(args.prompts, outputs)]
