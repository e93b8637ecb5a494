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

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments, default_data_collator, set_seed

from ..configuration_concept import FIRING_RULES, Qwen2ConceptCompressionConfig, gumbel_temperature
from ..data import load_corpus
from ..distributed import main_process_first
from ..modeling_concept import ConceptEmbedding, Qwen2ConceptCompressionForCausalLM
from ..runs import RunDir, export_model_run, export_run, prepare_run_dir, read_manifest
from ..tokenization import load_tokenizer, resolve_tokenizer
from .ar import pack_sentences, sample
from .callbacks import TimeBudgetCallback, WindowedMetrics
from .common import (TrainConfig, announce, check_choice, check_positive, default_training_arguments,
                     finalize_training_arguments, resume_checkpoint, run_training)

NEW_MODULES = ["concept_head", "concept_embedding"]
TRAINING_DEFAULTS = dict(max_steps=600, learning_rate=1e-3)
SAVE_MODES = ("merged", "adapter")


@dataclass
class ConceptTrainConfig(TrainConfig):
    """`genlab train concept --base RUN_DIR`: the concept model's options besides `TrainingArguments`."""

    run_dir: str = field(default="runs/concept-tiny", metadata={"help": "where the checkpoint and logs go"})
    base: str | None = field(default=None, metadata={
        "help": "a Qwen2ForCausalLM checkpoint (e.g. a `genlab train ar` run); required"})
    layers: str | None = field(default=None, metadata={"help": "shallow,middle,deep layer counts (default: ¼, ½, ¼)"})
    target_ratio: float = field(default=0.25, metadata={"help": "concepts per token, r (C7)"})
    max_null_run: int | None = field(default=None, metadata={"help": "longest <NULL> run (default 2/r - 1)"})
    concept_vocab: int = field(default=4096, metadata={"help": "concept vocabulary size K"})
    firing: str = field(default="threshold", metadata={
        "choices": list(FIRING_RULES), "help": "threshold: one rule everywhere (P > ½); sampled: the ablation"})
    ratio_weight: float = field(default=1.0, metadata={
        "help": "weight of the C7 rate loss (H-Net's on the hard decisions; (G - r)² for sampled firing)"})
    anneal_steps: int | None = field(default=None, metadata={"help": "Gumbel tau annealing steps (default: max-steps)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (alpha = 2r)"})
    save: str = field(default="merged", metadata={"choices": list(SAVE_MODES),
                                                   "help": "a merged checkpoint or the LoRA adapter + new modules"})
    block_size: int = field(default=128, metadata={"help": "tokens per packed training block"})
    eval_blocks: int = field(default=128, metadata={"help": "validation blocks for perplexity"})

    def __post_init__(self):
        super().__post_init__()
        if self.base is None:
            raise ValueError("--base is required: a Qwen2ForCausalLM checkpoint directory")
        check_choice(self, "save", SAVE_MODES)
        check_choice(self, "firing", FIRING_RULES)
        check_positive(self, "concept_vocab", "lora_r", "block_size", "eval_blocks")
        self.layer_split()  # a bad --layers is refused before any training

    def layer_split(self) -> dict:
        """``num_shallow/middle/deep_layers`` from ``layers`` ({} for the model's default split)."""
        if not self.layers:
            return {}
        try:
            shallow, middle, deep = (int(n) for n in self.layers.split(","))
        except ValueError:
            raise ValueError(f"--layers must be three integers 'shallow,middle,deep', got {self.layers!r}") from None
        return dict(num_shallow_layers=shallow, num_middle_layers=middle, num_deep_layers=deep)

    def concept_fields(self, max_steps: int) -> dict:
        """The config fields this run adds to the base (layer split, vocabulary, rate controls, schedule, LoRA)."""
        return dict(concept_vocab_size=self.concept_vocab, target_compression_ratio=self.target_ratio,
                    max_null_run=self.max_null_run, firing=self.firing, gumbel_anneal_steps=self.anneal_steps or max_steps,
                    ratio_loss_weight=self.ratio_weight, lora_r=self.lora_r, lora_alpha=2 * self.lora_r,
                    **self.layer_split())


def base_lora_config() -> LoraConfig:
    """The LoRA a plain base gets to be compared with a concept model: the concept model's defaults (r = 16,
    attention + MLP linears)."""
    defaults = Qwen2ConceptCompressionConfig()
    return LoraConfig(r=defaults.lora_r, lora_alpha=defaults.lora_alpha, target_modules=list(defaults.lora_target_modules))


@dataclass
class BaseLoraTrainConfig(TrainConfig):
    """The concept model's comparison: its base fine-tuned with the same LoRA, steps and data (C10)."""

    run_dir: str = field(default="runs/base-lora", metadata={"help": "where the merged fine-tuned base goes"})
    base: str | None = field(default=None, metadata={"help": "the Qwen2ForCausalLM checkpoint; required"})
    block_size: int = field(default=128, metadata={"help": "tokens per packed training block"})

    def __post_init__(self):
        super().__post_init__()
        if self.base is None:
            raise ValueError("--base is required: a Qwen2ForCausalLM checkpoint directory")


def train_base_lora(config: BaseLoraTrainConfig, training: TrainingArguments | None = None,
                    callbacks: Sequence[TrainerCallback] = ()) -> RunDir:
    """LoRA fine-tuning of the plain base (``base_lora_config``), merged and exported as a causal-LM run."""
    training = training or default_training_arguments(TRAINING_DEFAULTS)
    run_dir = prepare_run_dir(config.run_dir)
    tokenizer = resolve_tokenizer(config.tokenizer or config.base)
    blocks = pack_sentences(load_corpus(config.data)["train"], tokenizer, config.block_size)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(config.base), base_lora_config())
    trainer = Trainer(model=model, args=finalize_training_arguments(training, run_dir, remove_unused_columns=False),
                      train_dataset=blocks, data_collator=default_data_collator,
                      callbacks=[TimeBudgetCallback(config.budget), *callbacks])
    result = run_training(trainer, resume_checkpoint(config, run_dir))
    manifest = {"system": "ar", "role": "LoRA-fine-tuned base (concept comparison)", "base_model": str(config.base),
                "steps": trainer.state.global_step, "train_loss": result.training_loss, "seed": training.seed}
    export_model_run(run_dir, model.merge_and_unload(), tokenizer, manifest)
    announce(f"base + LoRA: {trainer.state.global_step} steps → {run_dir}")
    return RunDir(run_dir, manifest)


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
        self.metrics = WindowedMetrics(summaries=lambda t: {"concept_usage_entropy": usage_entropy(t.get("counts"))})
        self.metrics.install(self)

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
        self.metrics.accumulate("counts", stats.pop("concept_counts"))
        self.metrics.maximum("tail_max", stats.pop("tail_max"))
        stats["ce_per_token"] = outputs.ce_loss.detach()
        stats["rate_loss"] = outputs.rate_loss.detach()
        stats["soft_concept_rate"] = outputs.soft_concept_rate.detach()
        for name, value in stats.items():
            self.metrics.add(name, value)
        self.metrics.step_done()


def concept_statistics(is_concept: torch.Tensor, concept_ids: torch.Tensor, valid: torch.Tensor,
                       concept_vocab_size: int) -> dict:
    """C7 monitors of one batch: compression ratio, <NULL> rate, mean/max tail length, concept id counts."""
    tokens = valid.sum().clamp(min=1)
    index = valid.long().cumsum(1) - 1  # index among real tokens: left padding is not part of any tail
    last = torch.where(is_concept & valid, index, -1).cummax(1).values
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


@contextmanager
def concept_intervention(model, kind: str, generator: torch.Generator | None = None):
    """Within the block, every concept vector the ConceptEmbedding produces is ``"zeroed"`` or ``"permuted"`` across
    the batch's concept positions (padding slots untouched): what the model loses then is what concepts carry."""
    if kind not in ("permuted", "zeroed"):
        raise ValueError(f"kind must be 'permuted' or 'zeroed', got {kind!r}")

    def hook(module, inputs, output):
        valid = inputs[0][..., : module.concept_vocab_size].sum(-1) > 0.5  # (batch, M): real concept rows
        if kind == "zeroed":
            return output.masked_fill(valid[..., None], 0.0)
        rows = output[valid]  # (n, hidden)
        order = torch.randperm(rows.shape[0], generator=generator).to(rows.device)
        changed = output.clone()
        changed[valid] = rows[order]
        return changed

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, ConceptEmbedding)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def evaluate_concepts(model, blocks, batch_size: int = 16, seed: int = 0) -> dict:
    """On validation blocks, with noise-free decisions: perplexity per normal token (CE only, no rate loss), the
    concept rate, the share of concepts the head chose (not forced), and ΔNLL per token when the concept vectors
    are permuted across positions or zeroed (C10: concepts that can be destroyed at no cost carry nothing)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    nll = dict.fromkeys(("plain", "permuted", "zeroed"), 0.0)
    total_tokens, concepts, forced, tokens = 0, 0, 0, 0
    for start in range(0, len(blocks), batch_size):
        ids = torch.tensor(blocks[start : start + batch_size]["input_ids"], device=model.device)
        out = model(input_ids=ids, labels=ids)
        for kind in ("permuted", "zeroed"):
            with concept_intervention(model, kind, generator):
                nll[kind] += float(model(input_ids=ids, labels=ids).ce_loss) * ids[:, 1:].numel()
        nll["plain"] += float(out.ce_loss) * ids[:, 1:].numel()
        total_tokens += ids[:, 1:].numel()
        concepts += int(out.is_concept.sum())
        forced += int(out.is_forced.sum())
        tokens += ids.numel()
    per_token = {kind: value / max(1, total_tokens) for kind, value in nll.items()}
    return {"val_ppl": math.exp(per_token["plain"]), "val_compression_ratio": concepts / max(1, tokens),
            "natural_fire_fraction": 1 - forced / max(1, concepts),
            "delta_nll_concepts_permuted": per_token["permuted"] - per_token["plain"],
            "delta_nll_concepts_zeroed": per_token["zeroed"] - per_token["plain"]}


def load_concept_run(run_dir: str | Path) -> Qwen2ConceptCompressionForCausalLM:
    """A trained concept run, merged or adapter (base rebuilt from its path + the LoRA adapter and new modules)."""
    run_dir = Path(run_dir)
    if not (run_dir / "adapter_config.json").is_file():
        return Qwen2ConceptCompressionForCausalLM.from_pretrained(run_dir)
    fields = Qwen2ConceptCompressionConfig.from_pretrained(run_dir).concept_fields()
    model = Qwen2ConceptCompressionForCausalLM.from_base_pretrained(read_manifest(run_dir)["base_model"], **fields)
    return PeftModel.from_pretrained(model, run_dir).merge_and_unload()


def train_concept(config: ConceptTrainConfig, training: TrainingArguments | None = None,
                  callbacks: Sequence[TrainerCallback] = ()) -> RunDir:
    """Train (or resume) the concept model on the base, evaluate, export."""
    training = training or default_training_arguments(TRAINING_DEFAULTS)
    run_dir = prepare_run_dir(config.run_dir)
    set_seed(training.seed)
    with main_process_first():  # under accelerate/torchrun: prepared once, the other ranks read the caches
        tokenizer = resolve_tokenizer(config.tokenizer or config.base)
        corpus = load_corpus(config.data)
        train_blocks = pack_sentences(corpus["train"], tokenizer, config.block_size)
        eval_blocks = pack_sentences(corpus["validation"], tokenizer, config.block_size)
    eval_blocks = eval_blocks.select(range(min(config.eval_blocks, len(eval_blocks))))

    fields = config.concept_fields(training.max_steps)
    model = add_concept_lora(Qwen2ConceptCompressionForCausalLM.from_base_pretrained(config.base, **fields))
    trainer = ConceptCompressionTrainer(
        model=model,
        args=finalize_training_arguments(training, run_dir, remove_unused_columns=False),
        train_dataset=train_blocks,
        data_collator=default_data_collator,
        callbacks=[TimeBudgetCallback(config.budget), *callbacks],
    )
    result = run_training(trainer, resume_checkpoint(config, run_dir))
    merged = model.merge_and_unload() if config.save == "merged" else None
    batch_size = training.per_device_train_batch_size
    evaluation = evaluate_concepts(merged if merged is not None else model, eval_blocks, batch_size)

    manifest = {
        "system": "concept",
        "base_model": str(config.base),
        "data": config.data,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        **evaluation,
        "save": config.save,
        "block_size": config.block_size,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "seed": training.seed,
        **fields,
    }
    if config.save == "merged":
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
    return RunDir(run_dir, manifest)


def usage_snippet(model_id: str) -> str:
    """The model card's snippet for a merged run: remote-code load, greedy decoding, the concepts on request."""
    return (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"tokenizer = AutoTokenizer.from_pretrained({model_id!r}, trust_remote_code=True)\n"
            f"model = AutoModelForCausalLM.from_pretrained({model_id!r}, trust_remote_code=True)\n"
            "inputs = tokenizer(\"新华社北京\", return_tensors=\"pt\")\n"
            "out = model.generate(**inputs, max_new_tokens=20, do_sample=False, return_dict_in_generate=True)\n"
            "print(tokenizer.decode(out.sequences[0], skip_special_tokens=True))\n"
            "print(out.cache.concept_ids)  # the ConceptHead's choice per token (<NULL> = K)\n")


def generate_texts(run_dir: str, prompts: list[str], max_new_tokens: int, greedy: bool) -> list[str]:
    """`genlab generate --model RUN_DIR PROMPT…` for a concept run: prompt + continuation per line."""
    model = load_concept_run(run_dir).eval()
    tokenizer = load_tokenizer(run_dir)
    outputs = sample(model, tokenizer, prompts, max_new_tokens, do_sample=not greedy)
    return [prompt + text for prompt, text in zip(prompts, outputs)]
