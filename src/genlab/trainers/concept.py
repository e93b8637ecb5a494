"""`genlab train concept --base RUN_DIR`: online concept compression on a trained Qwen2 (SPEC C5–C7, H6).

The base (the AR run of `genlab train ar`, the converted SmolLM2, any Qwen2 checkpoint) is wrapped by
``Qwen2ConceptCompressionForCausalLM.from_base_pretrained``; peft LoRA goes on its attention/MLP
linears (backbone frozen) and the ConceptHead + ConceptEmbedding are trained whole
(``modules_to_save``). The objective is next-token CE only (C5); the Gumbel temperature is a pure
function of the global step, so resuming reproduces it. Logged with the loss: CE per normal token,
compression ratio (concepts per token), ``<NULL>`` rate, the soft concept rate, mean/max tail length
and the concept-usage entropy. The run directory is either a merged standalone checkpoint
(``--save merged``, the default; loads with ``AutoModelForCausalLM`` and remote code) or the LoRA
adapter + new modules + the concept config (``--save adapter``; ``load_concept_run`` reloads both).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Trainer, default_data_collator, set_seed

from ..configuration_concept import Qwen2ConceptCompressionConfig, gumbel_temperature
from ..data import load_corpus
from ..distributed import main_process_first, max_across_processes, sum_across_processes
from ..modeling_concept import Qwen2ConceptCompressionForCausalLM
from ..runs import export_run, prepare_run_dir, read_manifest
from ..tokenization import load_tokenizer, resolve_tokenizer
from .ar import pack_sentences, sample
from .common import TimeBudgetCallback, add_common_arguments, announce, resume_checkpoint, training_arguments

NEW_MODULES = ["concept_head", "concept_embedding"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_run_dir="runs/concept-tiny", max_steps=600, batch_size=16, lr=1e-3)
    parser.add_argument("--base", required=True, help="a Qwen2ForCausalLM checkpoint (e.g. a `genlab train ar` run)")
    parser.add_argument("--layers", default=None, help="shallow,middle,deep layer counts (default: ¼, ½, ¼)")
    parser.add_argument("--target-ratio", type=float, default=0.25, help="concepts per token, r (C7)")
    parser.add_argument("--max-null-run", type=int, default=None, help="longest <NULL> run (default 2/r - 1)")
    parser.add_argument("--concept-vocab", type=int, default=4096)
    parser.add_argument("--ratio-weight", type=float, default=0.0,
                        help="weight of the optional (rate - r)² penalty on the soft concept rate (C7; off by default)")
    parser.add_argument("--anneal-steps", type=int, default=None, help="Gumbel tau annealing steps (default: max-steps)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--save", choices=("merged", "adapter"), default="merged")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--eval-blocks", type=int, default=128)


def concept_fields(args: argparse.Namespace) -> dict:
    """The config fields this run adds to the base (layer split, vocabulary, rate controls, schedule, LoRA)."""
    fields = dict(concept_vocab_size=args.concept_vocab, target_compression_ratio=args.target_ratio,
                  max_null_run=args.max_null_run, gumbel_anneal_steps=args.anneal_steps or args.max_steps,
                  ratio_loss_weight=args.ratio_weight, lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    if args.layers:
        try:
            shallow, middle, deep = (int(n) for n in args.layers.split(","))
        except ValueError:
            raise ValueError(f"--layers must be three integers 'shallow,middle,deep', got {args.layers!r}") from None
        fields.update(num_shallow_layers=shallow, num_middle_layers=middle, num_deep_layers=deep)
    return fields


def add_concept_lora(model: Qwen2ConceptCompressionForCausalLM) -> PeftModel:
    """C6: LoRA on the backbone's attention/MLP linears (frozen otherwise); the new modules train whole."""
    config = model.config
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), modules_to_save=list(NEW_MODULES))
    return get_peft_model(model, lora)


class ConceptCompressionTrainer(Trainer):
    """Trainer with the scheduled Gumbel temperature and the C7 monitors (averaged over each logging window)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._monitor_sums: dict[str, float] = {}
        self._monitor_max: dict[str, float] = {}
        self._concept_counts = None
        self._monitor_batches = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        config = self.model_config
        outputs = model(**inputs, gumbel_tau=gumbel_temperature(config, self.state.global_step))
        if model.training:
            self._record(outputs, inputs, config)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    @property
    def model_config(self) -> Qwen2ConceptCompressionConfig:
        return self.accelerator.unwrap_model(self.model).config

    @torch.no_grad()
    def _record(self, outputs, inputs, config) -> None:
        valid = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()
        stats = concept_statistics(outputs.is_concept, outputs.concept_ids, valid, config.concept_vocab_size)
        counts = stats.pop("concept_counts")
        self._concept_counts = counts if self._concept_counts is None else self._concept_counts + counts
        stats["ce_per_token"] = outputs.loss.detach()
        stats["soft_concept_rate"] = outputs.soft_concept_rate.detach()
        for name, value in stats.items():
            if name == "tail_max":
                self._monitor_max[name] = max(self._monitor_max.get(name, 0.0), float(value))
            else:
                self._monitor_sums[name] = self._monitor_sums.get(name, 0.0) + float(value)
        self._monitor_batches += 1

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self._monitor_batches and "loss" in logs:  # reduced over ranks: the global batch, not rank 0's (H6)
            sums = sum_across_processes({**self._monitor_sums, "batches": self._monitor_batches})
            batches = sums.pop("batches")
            logs.update({name: total / batches for name, total in sums.items()})
            logs.update(max_across_processes(self._monitor_max))
            logs["concept_usage_entropy"] = usage_entropy(self.accelerator.reduce(self._concept_counts, "sum"))
            self._monitor_sums, self._monitor_max, self._concept_counts, self._monitor_batches = {}, {}, None, 0
        super().log(logs, *args, **kwargs)


def concept_statistics(is_concept: torch.Tensor, concept_ids: torch.Tensor, valid: torch.Tensor,
                       concept_vocab_size: int) -> dict:
    """C7 monitors of one batch: compression ratio, <NULL> rate, mean/max tail length, concept id counts."""
    tokens = valid.sum().clamp(min=1)
    index = torch.arange(is_concept.shape[1], device=is_concept.device).expand_as(is_concept)
    last = torch.where(is_concept, index, -1).cummax(1).values
    tail = torch.where(valid, index - last, 0)  # tokens in the tail a token reads (0 when it is compressed)
    ratio = (is_concept & valid).sum() / tokens
    ids = concept_ids[is_concept & valid]
    return {
        "compression_ratio": ratio,
        "null_rate": 1 - ratio,
        "tail_mean": tail.sum() / tokens,
        "tail_max": tail.max(),
        "concept_counts": torch.bincount(ids, minlength=concept_vocab_size)[:concept_vocab_size],
    }


def usage_entropy(counts: torch.Tensor | None) -> float:
    """Entropy (nats) of the concept-id usage; log K would be perfectly uniform use."""
    if counts is None or counts.sum() == 0:
        return 0.0
    p = counts.double() / counts.sum()
    return float(-(p[p > 0] * p[p > 0].log()).sum())


@torch.no_grad()
def evaluate_concepts(model, blocks, batch_size: int = 16) -> dict:
    """Validation perplexity (per normal token) and compression statistics with noise-free decisions."""
    model.eval()
    total_nll, total_tokens, concepts, tokens = 0.0, 0, 0, 0
    for start in range(0, len(blocks), batch_size):
        ids = torch.tensor(blocks[start : start + batch_size]["input_ids"], device=model.device)
        out = model(input_ids=ids, labels=ids)
        n = ids[:, 1:].numel()
        total_nll += float(out.loss) * n
        total_tokens += n
        concepts += int(out.is_concept.sum())
        tokens += ids.numel()
    return {"val_ppl": math.exp(total_nll / max(1, total_tokens)), "val_compression_ratio": concepts / max(1, tokens)}


def load_concept_run(run_dir: str | Path) -> Qwen2ConceptCompressionForCausalLM:
    """A trained concept run, merged or adapter (base rebuilt from its path + the LoRA adapter and new modules)."""
    run_dir = Path(run_dir)
    if not (run_dir / "adapter_config.json").is_file():
        return Qwen2ConceptCompressionForCausalLM.from_pretrained(run_dir)
    fields = Qwen2ConceptCompressionConfig.from_pretrained(run_dir).concept_fields()
    model = Qwen2ConceptCompressionForCausalLM.from_base_pretrained(read_manifest(run_dir)["base_model"], **fields)
    return PeftModel.from_pretrained(model, run_dir).merge_and_unload()


def run(args: argparse.Namespace) -> dict:
    """Train (or resume) the concept model on the base, evaluate, export; returns the manifest."""
    run_dir = prepare_run_dir(args.run_dir)
    set_seed(args.seed)
    with main_process_first():  # under accelerate/torchrun: prepared once, the other ranks read the caches
        tokenizer = resolve_tokenizer(args.tokenizer or args.base)
        corpus = load_corpus(args.data)
        train_blocks = pack_sentences(corpus["train"], tokenizer, args.block_size)
        eval_blocks = pack_sentences(corpus["validation"], tokenizer, args.block_size)
    eval_blocks = eval_blocks.select(range(min(args.eval_blocks, len(eval_blocks))))

    model = add_concept_lora(Qwen2ConceptCompressionForCausalLM.from_base_pretrained(args.base, **concept_fields(args)))
    trainer = ConceptCompressionTrainer(
        model=model,
        args=training_arguments(args, run_dir, remove_unused_columns=False),
        train_dataset=train_blocks,
        data_collator=default_data_collator,
        callbacks=[TimeBudgetCallback(args.budget)],
    )
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(args, run_dir))
    merged = model.merge_and_unload() if args.save == "merged" else None
    evaluation = evaluate_concepts(merged if merged is not None else model, eval_blocks, args.batch_size)

    manifest = {
        "system": "concept",
        "base_model": str(args.base),
        "data": args.data,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        **evaluation,
        "save": args.save,
        "block_size": args.block_size,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "seed": args.seed,
        **concept_fields(args),
    }
    if args.save == "merged":
        manifest["usage_snippet"] = usage_snippet(str(run_dir))

    def save(tmp: Path) -> None:
        if merged is not None:
            merged.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp)
            model.get_base_model().config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    export_run(run_dir, save, manifest)
    announce(f"concept: {manifest['steps']} steps, validation perplexity {evaluation['val_ppl']:.2f}, "
             f"compression ratio {evaluation['val_compression_ratio']:.3f} → {run_dir}")
    return manifest


def usage_snippet(model_id: str) -> str:
    """The model card's snippet for a merged run: remote-code load, greedy decoding, the concepts on request."""
    return (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"tokenizer = AutoTokenizer.from_pretrained({model_id!r})\n"
            f"model = AutoModelForCausalLM.from_pretrained({model_id!r}, trust_remote_code=True)\n"
            "inputs = tokenizer(\"新华社北京\", return_tensors=\"pt\")\n"
            "out = model.generate(**inputs, max_new_tokens=20, do_sample=False, return_dict_in_generate=True)\n"
            "print(tokenizer.decode(out.sequences[0], skip_special_tokens=True))\n"
            "print(out.cache.concept_ids)  # the ConceptHead's choice per token (<NULL> = K)\n")


def generate_cli(args: argparse.Namespace) -> list[str]:
    """`genlab generate --model RUN_DIR PROMPT…` for a concept run: prompt + continuation per line."""
    model = load_concept_run(args.model).eval()
    tokenizer = load_tokenizer(args.model)
    outputs = sample(model, tokenizer, args.prompts, args.max_new_tokens, do_sample=not args.greedy)
    return [prompt + text for prompt, text in zip(args.prompts, outputs)]
