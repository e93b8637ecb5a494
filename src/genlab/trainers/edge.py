"""`genlab train edge --cloud CLOUD`: a standalone edge distilled from its cloud (SPEC S1, S3; issue 15).

The edge runs on its own device, so it never reads the cloud's hidden states (an EAGLE head is not an edge). It
is the cloud's own architecture cut to its first ``num_layers`` decoder layers, initialised from them, with the
cloud's embeddings and final norm, and an FR-Spec output vocabulary: ``config.draft_vocab_ids`` lists the
``draft_vocab_size`` most frequent token ids of the training corpus, and only those rows of the (tied) head are
scored when it drafts (``generation_speculative``). The cloud still verifies over its full vocabulary, so
lossless decoding stays exact whatever the edge drafts.

Training data: corpus sentences plus, with ``cloud_continuations`` > 0, the cloud's OWN greedy continuations of
that many train-split prompts (the first third of a sentence, as the bench prompts; the CJK processors on, as at
decoding time) — the text the edge must predict when it drafts, which corpus text alone is not (an edge
distilled on corpus text only accepted 0.11 of its drafts on SmolLM2's continuations). The draft vocabulary
is counted over both. Training: KL(cloud ‖ edge) per token over the draft vocabulary (both distributions
renormalised over it; the cloud's logits there come from its last hidden state and the same head rows, so its
full head is never computed), on packed blocks. Embeddings and head are frozen (they are the cloud's); the layers and the
final norm learn. The distillation targets are the cloud's raw distributions: the CJK processors shift both
models' scores the same way at decoding time. The run directory is an ordinary ``AutoModelForCausalLM``
checkpoint of the cloud's class (it loads without genlab; the map rides in ``config.json``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain

import datasets
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

from ..clouds import load_cloud
from ..data import load_corpus
from ..generation_speculative import trimmed_logits
from ..logits_process import build_cjk_processors
from ..runs import RunDir, export_model_run, prepare_run_dir
from .ar import pack_sentences
from .callbacks import TimeBudgetCallback
from .common import (TrainConfig, announce, check_positive, default_training_arguments, finalize_training_arguments,
                     resume_checkpoint, run_training)

TRAINING_DEFAULTS = dict(max_steps=300, learning_rate=1e-3, per_device_train_batch_size=8, save_steps=100)


@dataclass
class EdgeTrainConfig(TrainConfig):
    """`genlab train edge`: the edge's options besides `TrainingArguments`."""

    run_dir: str = field(default="runs/speculative-edge-kd", metadata={"help": "where the checkpoint and logs go"})
    cloud: str | None = field(default=None, metadata={
        "help": "the teacher: 'smollm2', 'gemma3' (registry packages) or a cloud run directory; required"})
    num_layers: int = field(default=2, metadata={"help": "decoder layers of the edge (the cloud's first ones)"})
    draft_vocab_size: int = field(default=8192, metadata={
        "help": "FR-Spec: the edge drafts only the N most frequent corpus tokens (0: the full vocabulary)"})
    block_size: int = field(default=128, metadata={"help": "tokens per packed training block"})
    cloud_continuations: int = field(default=1024, metadata={
        "help": "train prompts the cloud continues greedily to make distillation text (0: corpus text only)"})
    continuation_tokens: int = field(default=40, metadata={"help": "new tokens per cloud continuation"})

    def __post_init__(self):
        super().__post_init__()
        if self.cloud is None:
            raise ValueError("--cloud is required: 'smollm2', 'gemma3' or the run directory of the cloud model")
        check_positive(self, "num_layers", "block_size", "continuation_tokens")
        if self.cloud_continuations < 0:
            raise ValueError(f"--cloud-continuations must be ≥ 0, got {self.cloud_continuations}")
        if self.draft_vocab_size < 0:
            raise ValueError(f"--draft-vocab-size must be ≥ 0 (0: full vocabulary), got {self.draft_vocab_size}")


def frequent_token_ids(blocks, tokenizer, size: int) -> list[int]:
    """The ``size`` most frequent ids of the packed ``blocks`` plus the special tokens, sorted (FR-Spec)."""
    counts = Counter(token for row in blocks["input_ids"] for token in row)
    keep = {token for token, _ in counts.most_common(size)} | set(tokenizer.all_special_ids)
    return sorted(keep)


def prompt_of(sentence: str) -> str:
    """The first third of a sentence (6 characters at least), cut at a space in English: a bench-style prompt."""
    head = sentence[: max(6, len(sentence) // 3)]
    return head.rsplit(" ", 1)[0] if " " in head else head


@torch.no_grad()
def cloud_continuations(cloud, tokenizer, sentences: list[str], new_tokens: int, batch_size: int = 16) -> list[list[int]]:
    """Prompt + the cloud's greedy continuation (CJK processors on, no padding kept) for each sentence's prompt."""
    pad_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    processors = build_cjk_processors(tokenizer)
    rows = []
    for start in tqdm(range(0, len(sentences), batch_size), desc="cloud continuations"):
        batch = tokenizer([prompt_of(s) for s in sentences[start : start + batch_size]], return_tensors="pt",
                          padding=True)
        out = cloud.generate(**batch, max_new_tokens=new_tokens, do_sample=False, logits_processor=processors,
                             pad_token_id=pad_id)
        rows += [[t for t, keep in zip(row.tolist(), mask.tolist() + [1] * new_tokens) if keep and t != pad_id]
                 for row, mask in zip(out, batch["attention_mask"])]
    tokenizer.padding_side = pad_side
    return rows


def pack_ids(rows: list[list[int]], eos_id: int, block_size: int) -> datasets.Dataset:
    """Token rows joined with EOS and cut into blocks of ``block_size``."""
    stream = list(chain.from_iterable(row + [eos_id] for row in rows))
    blocks = [stream[i : i + block_size] for i in range(0, len(stream) // block_size * block_size, block_size)]
    return datasets.Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def edge_from_cloud(cloud, num_layers: int, draft_vocab_ids: list[int] | None):
    """The cloud's class with its first ``num_layers`` layers, embeddings and norm copied; ``draft_vocab_ids`` in
    its config (``ValueError`` when the cloud has fewer layers)."""
    config = cloud.config.__class__.from_dict(cloud.config.to_dict())
    if num_layers > config.num_hidden_layers:
        raise ValueError(f"--num-layers must be ≤ the cloud's {config.num_hidden_layers} layers, got {num_layers}")
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:num_layers]
    for name in ("quantization_config", "auto_map"):  # a GGUF cloud's loader settings are not the edge's
        if hasattr(config, name):
            delattr(config, name)
    config.draft_vocab_ids = draft_vocab_ids
    edge = type(cloud)(config)
    missing, unexpected = edge.load_state_dict(cloud.state_dict(), strict=False)
    if missing:
        raise ValueError(f"the edge's weights are not all in the cloud: {missing[:5]}")
    edge.generation_config = cloud.generation_config
    return edge


class DistillationTrainer(Trainer):
    """KL(cloud ‖ edge) per token over the draft vocabulary, renormalised: what acceptance needs."""

    def __init__(self, *args, teacher, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval()
        draft_ids = self.model.config.draft_vocab_ids
        head = self.model.get_output_embeddings().weight
        self.draft_ids = torch.arange(head.shape[0]) if draft_ids is None else torch.tensor(draft_ids)
        self.softcap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)

    def _draft_logits(self, model, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = model.get_decoder()(input_ids=input_ids).last_hidden_state  # (batch, seq, hidden)
        head = model.get_output_embeddings().weight[self.draft_ids.to(hidden.device)]
        return trimmed_logits(hidden, head, self.softcap)  # (batch, seq, draft_vocab)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        student = self._draft_logits(model, inputs["input_ids"])
        with torch.no_grad():
            teacher = self._draft_logits(self.teacher, inputs["input_ids"])
        vocab = student.shape[-1]
        loss = F.kl_div(student.reshape(-1, vocab).log_softmax(-1), teacher.reshape(-1, vocab).log_softmax(-1),
                        log_target=True, reduction="batchmean")
        return (loss, {"logits": student}) if return_outputs else loss


def train_edge(config: EdgeTrainConfig, training: TrainingArguments | None = None,
               callbacks: Sequence[TrainerCallback] = ()) -> RunDir:
    """Distil (or resume distilling) an edge from ``config.cloud``; export it as an ordinary causal-LM run."""
    training = training or default_training_arguments(TRAINING_DEFAULTS)
    run_dir = prepare_run_dir(config.run_dir)
    teacher, tokenizer = load_cloud(config.cloud)
    train = load_corpus(config.data)["train"]
    blocks = pack_sentences(train, tokenizer, config.block_size)
    if config.cloud_continuations:
        sentences = train.shuffle(seed=training.seed).select(range(min(config.cloud_continuations, len(train))))
        rows = cloud_continuations(teacher, tokenizer, sentences["text"], config.continuation_tokens)
        blocks = datasets.concatenate_datasets([blocks, pack_ids(rows, tokenizer.eos_token_id, config.block_size)])
    draft_ids = frequent_token_ids(blocks, tokenizer, config.draft_vocab_size) if config.draft_vocab_size else None
    model = edge_from_cloud(teacher, config.num_layers, draft_ids)
    for parameter in (*model.get_input_embeddings().parameters(), *model.get_output_embeddings().parameters()):
        parameter.requires_grad_(False)  # the cloud's embeddings and head: frozen
    trainer = DistillationTrainer(model=model, args=finalize_training_arguments(training, run_dir),
                                  train_dataset=blocks, data_collator=default_data_collator,
                                  callbacks=[TimeBudgetCallback(config.budget), *callbacks], teacher=teacher)
    result = run_training(trainer, resume_checkpoint(config, run_dir))
    manifest = {"system": "edge", "cloud": str(config.cloud), "num_layers": config.num_layers,
                "cloud_continuations": config.cloud_continuations, "training_blocks": len(blocks),
                "draft_vocab_size": len(draft_ids) if draft_ids else None, "data": config.data,
                "steps": trainer.state.global_step, "train_loss": result.training_loss, "seed": training.seed,
                "parameters": sum(p.numel() for p in model.parameters()), "budget_s": config.budget}
    export_model_run(run_dir, trainer.model, tokenizer, manifest)
    announce(f"edge: {config.num_layers} layers of {config.cloud}, {manifest['draft_vocab_size'] or 'full'} draft "
             f"tokens, {trainer.state.global_step} steps → {run_dir}")
    return RunDir(run_dir, manifest)
