"""`genlab train planner`: hard-EM training of the concept-first planner–executor (SPEC P4–P7, H6).

Data — (u, y) pairs from the corpus (``build_pairs``): in a news paragraph, the previous sentence (u) →
the next sentence (y), using the ``doc``/``sent`` columns (both sentences must be in the same split); for a
review, its polarity and its first ``opening_chars`` characters (u = "好评：开头" / "差评：开头") → the review's
first sentence (y). y ends with ``</s>``.

E-step (P4) — for each example, candidates z are scored by S(z) = log p(y|z) + log p(z|u) and the argmax is
kept as z*. Candidates: the proposer from y (below), the planner's greedy plan and ``estep_top_k`` samples,
and the cached z* itself. The proposer is ``RareCharacterProposer``, a parameter-free extractor, chosen over
a learned encoder-with-quantiser because it is informative from step 0 (so the executor learns to read z at
once instead of collapsing to an LM that ignores it, the seed's first "abnormal" case), needs no second model
kept in sync with the E-step, and still leaves the E-step a real choice: ``estep_top_k`` granularities of
keyword plans, which trade log p(y|z) against log p(z|u), and the planner's own plans.

- type ``keywords``: the m rarest characters of y (the corpus tokenizer numbers characters by frequency, so
  the rarest are the highest ids), in text order, hashed to ``3 + id mod V``;
- type ``shape``: the length of each clause of y (split at ，。！？；：、), bucketed by 4 characters.

z* is cached per example index and searched again once it is ``estep_refresh_steps`` (M) steps old (v3.1);
the cache is saved in every checkpoint (``planner_zcache.pt``) so resuming continues with it. M-step: the
model's forward — executor on (z*, y), planner on (u, z*); ``concept_gradient`` selects hard ids,
straight-through or soft mixture. Curriculum (v3.1): a step's batch is drawn from the examples whose y is no
longer than ``curriculum_length(step)``, growing linearly from ``--curriculum-start`` to the longest y over
``--curriculum-steps``; the sampler is a pure function of (seed, step) so resuming reproduces it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import torch
from torch.utils.data import Sampler
from transformers import GenerationConfig, Trainer, TrainerCallback, set_seed

from ..configuration_planner import CONCEPT_PAD, NUM_CONCEPT_SPECIALS, PlannerExecutorConfig
from ..data import corpus_sources, load_corpus
from ..distributed import main_process_first, sum_across_processes
from ..modeling_planner import PlannerExecutorModel, concept_slot_mask
from ..runs import export_model_run, prepare_run_dir
from ..tokenization import FIRST_ORDINARY_ID, resolve_tokenizer
from .common import TimeBudgetCallback, add_common_arguments, announce, positive_int, resume_checkpoint, training_arguments
from .planner_monitors import (PlannerMonitorCallback, StatAccumulator, edit_distance, flip_rate, nll_by_position,
                               planner_entropy, staleness_gap, top1_margin)

PUNCTUATION = "，。！？；：、,.!?;:"
POLARITY = {"pos": "好评：", "neg": "差评："}
CACHE_FILE = "planner_zcache.pt"
TRAINER_LOG = "trainer_log.json"  # losses and monitor readings per logging step (bench plots them)
USAGE = """from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained({model_id!r})
model = AutoModel.from_pretrained({model_id!r}, trust_remote_code=True)
u = tokenizer(["新华社北京一月一日电。"], add_special_tokens=False, return_tensors="pt")
out = model.generate(u["input_ids"], u["attention_mask"], max_new_tokens=40, return_concepts=True)
print(out.concept_ids.tolist())  # (batch, types, max length): the plan
print(tokenizer.batch_decode(out.sequences, skip_special_tokens=True))
"""
PROPOSER_TYPES = ("keywords", "shape")


# -- data ------------------------------------------------------------------------------------------------------------
def pair_texts(split: datasets.Dataset, opening_chars: int = 4) -> tuple[list[str], list[str]]:
    """(u, y) strings: consecutive news sentences of a paragraph; review polarity + opening → first sentence."""
    frame = split.to_pandas().sort_values(["source", "label", "doc", "sent"], kind="stable")
    nxt = frame.shift(-1)
    follows = ((frame.source != "reviews") & (nxt.source == frame.source) & (nxt.doc == frame.doc)
               & (nxt.sent == frame.sent + 1))
    us, ys = frame.text[follows].tolist(), nxt.text[follows].tolist()
    reviews = frame[(frame.source == "reviews") & (frame.sent == 0)]
    us += [POLARITY.get(label, "") + text[:opening_chars] for label, text in zip(reviews.label, reviews.text)]
    ys += reviews.text.tolist()
    return us, ys


def build_pairs(split: datasets.Dataset, tokenizer, max_input_length: int, max_text_length: int,
                opening_chars: int = 4) -> datasets.Dataset:
    """Tokenised pairs: ``u_ids``, ``y_ids`` (ending in ``</s>``), ``index`` (the key of the z* cache)."""
    us, ys = pair_texts(split, opening_chars)
    if not us:
        raise ValueError("the data gives no (u, y) pairs: pairs are consecutive sentences of one line (paragraph) "
                         "or labelled reviews, so a file with one sentence per line has none; put paragraphs on lines")
    u_ids = tokenizer(us, add_special_tokens=False)["input_ids"]
    y_ids = [ids + [tokenizer.eos_token_id] for ids in tokenizer(ys, add_special_tokens=False)["input_ids"]]
    keep = [i for i, (u, y) in enumerate(zip(u_ids, y_ids)) if 0 < len(u) <= max_input_length and len(y) <= max_text_length]
    if not keep:
        raise ValueError(f"no (u, y) pair fits --max-input-length {max_input_length} / --max-text-length "
                         f"{max_text_length}")
    return datasets.Dataset.from_dict({"u_ids": [u_ids[i] for i in keep], "y_ids": [y_ids[i] for i in keep],
                                       "index": list(range(len(keep)))})


def pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad → ids (batch, T), mask (batch, T)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):  # collation, outside the model's hot path
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def collate(features: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    u_ids, u_mask = pad([f["u_ids"] for f in features], pad_id)
    y_ids, y_mask = pad([f["y_ids"] for f in features], pad_id)
    return {"input_ids": u_ids, "attention_mask": u_mask, "text_ids": y_ids, "text_attention_mask": y_mask,
            "index": torch.tensor([f["index"] for f in features])}


# -- curriculum (P5) -------------------------------------------------------------------------------------------------
def curriculum_length(step: int, start: int, end: int, ramp_steps: int) -> int:
    """Longest y allowed at ``step``: linear from ``start`` to ``end`` over ``ramp_steps`` (pure in step)."""
    return end if ramp_steps <= 0 else int(start + (end - start) * min(1.0, step / ramp_steps))


class CurriculumSampler(Sampler):
    """``steps × batch`` indices; step s draws uniformly among the examples with len(y) ≤ curriculum_length(s)."""

    def __init__(self, lengths: list[int], batch_size: int, steps: int, start: int, ramp_steps: int, seed: int):
        self.lengths = torch.tensor(lengths)
        self.batch_size, self.steps, self.start, self.ramp, self.seed = batch_size, steps, start, ramp_steps, seed

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def __iter__(self):
        order = self.lengths.argsort(stable=True)
        sorted_lengths = self.lengths[order]
        end = int(sorted_lengths[-1])
        limits = torch.tensor([curriculum_length(s, self.start, end, self.ramp) for s in range(self.steps)])
        pool = torch.searchsorted(sorted_lengths, limits, right=True).clamp(min=self.batch_size)  # (steps,)
        draws = torch.rand(self.steps, self.batch_size, generator=torch.Generator().manual_seed(self.seed))
        yield from order[(draws * pool[:, None]).long()].flatten().tolist()


# -- proposer q(z | y) and the E-step (P4) ----------------------------------------------------------------------------
class RareCharacterProposer:
    """Parameter-free z from y: keyword plans at several granularities plus the clause-length shape."""

    def __init__(self, config: PlannerExecutorConfig, tokenizer, granularities: int | None = None):
        unknown = [t for t in config.concept_types if t not in PROPOSER_TYPES]
        if unknown:
            raise ValueError(f"the proposer knows the concept types {PROPOSER_TYPES}, got {unknown}")
        self.config = config
        ids = tokenizer.convert_tokens_to_ids(list(PUNCTUATION))
        self.punctuation = torch.tensor([i for i in ids if i != tokenizer.unk_token_id])
        longest = config.concept_max_lengths[config.concept_types.index("keywords")] if "keywords" in config.concept_types else 1
        count = granularities or config.estep_top_k
        self.granularities = sorted({max(1, round(longest * (g + 1) / count)) for g in range(count)})

    def keywords(self, y: torch.Tensor, valid: torch.Tensor, m: int, vocab: int, width: int) -> torch.Tensor:
        """(batch, width): the m highest-id (rarest) ordinary characters of y in text order, hashed."""
        ordinary = valid & (y >= FIRST_ORDINARY_ID) & ~torch.isin(y, self.punctuation.to(y.device))
        score = torch.where(ordinary, y, -1)
        top = score.topk(min(m, y.shape[1]), dim=1)
        position = torch.where(top.values >= 0, top.indices, y.shape[1])  # missing ones sort last
        position = position.sort(dim=1).values
        chars = torch.cat([y, y.new_full((y.shape[0], 1), -1)], 1).gather(1, position)
        concepts = torch.where(chars >= 0, NUM_CONCEPT_SPECIALS + chars.clamp(min=0) % vocab, CONCEPT_PAD)
        return torch.nn.functional.pad(concepts, (0, width - concepts.shape[1]), value=CONCEPT_PAD)

    def shape(self, y: torch.Tensor, valid: torch.Tensor, max_clauses: int, vocab: int, width: int) -> torch.Tensor:
        """(batch, width): bucketed length (4 characters per bucket) of each clause of y."""
        is_punct = torch.isin(y, self.punctuation.to(y.device)) & valid
        clause = is_punct.long().cumsum(1) - is_punct.long()  # a mark belongs to the clause it ends
        chars = (valid & ~is_punct & (y != self.config.eos_token_id)).long()
        counts = torch.zeros(y.shape[0], y.shape[1] + 1, dtype=torch.long, device=y.device)
        counts.scatter_add_(1, clause, chars)
        counts = counts[:, :max_clauses]
        ended = (counts == 0).long().cummax(1).values.bool()
        concepts = torch.where(ended, CONCEPT_PAD, NUM_CONCEPT_SPECIALS + (counts // 4).clamp(max=vocab - 1))
        return torch.nn.functional.pad(concepts, (0, width - concepts.shape[1]), value=CONCEPT_PAD)

    def __call__(self, y: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
        """(batch, granularities, types, L) candidate plans."""
        valid, config = y_mask.bool(), self.config
        width = max(config.concept_max_lengths)
        plans = []
        for m in self.granularities:
            types = []
            for name, vocab, length in zip(config.concept_types, config.concept_vocab_sizes, config.concept_max_lengths):
                extract = self.keywords if name == "keywords" else self.shape
                types.append(extract(y, valid, m if name == "keywords" else length, vocab, width))
            plans.append(torch.stack(types, 1))
        return torch.stack(plans, 1)


def prior_weight(step: int, warmup: int, final: float = 1.0) -> float:
    """β of S(z) = log p(y|z) + β log p(z|u): final · step / W during the warm-up, then ``final`` (pure in step)."""
    return final if warmup <= 0 else final * min(1.0, step / warmup)


def score_candidates(model: PlannerExecutorModel, batch: dict, candidates: torch.Tensor,
                     beta: float = 1.0) -> torch.Tensor:
    """S(z) = log p(y|z) + β log p(z|u) for (batch, C, types, L) candidates → (batch, C); duplicates get −inf."""
    b, c = candidates.shape[:2]
    flat = candidates.flatten(0, 1)
    repeat = lambda t: t.repeat_interleave(c, 0)  # noqa: E731
    executor = model.executor_forward(flat, repeat(batch["text_ids"]), repeat(batch["text_attention_mask"]))
    planner = model.planner_forward(repeat(batch["input_ids"]), repeat(batch["attention_mask"]), flat)
    scores = (executor.log_prob + beta * planner.log_prob).view(b, c)
    content = candidates.masked_fill(~concept_slot_mask(candidates), CONCEPT_PAD).flatten(2)  # (batch, C, types·L)
    same = (content[:, :, None] == content[:, None]).all(-1)  # (batch, C, C)
    duplicate = (same & torch.ones(c, c, dtype=torch.bool, device=same.device).tril(-1)).any(-1)
    return scores.masked_fill(duplicate, float("-inf"))


@torch.no_grad()
def estep(model: PlannerExecutorModel, proposer: RareCharacterProposer, batch: dict, step: int,
          previous: torch.Tensor | None = None, has_previous: torch.Tensor | None = None,
          generator: torch.Generator | None = None):
    """z* = argmax over the candidates of S(z). Returns (z* (batch, types, L), scores (batch, C), candidates).

    ``previous`` (batch, types, L) joins the candidates when the config lists it, as column 0, so duplicates of
    it (masked to −inf) are the later columns and its score is ``scores[:, 0]``; rows where ``has_previous`` is
    False get −inf there. Before ``estep_warmup_steps`` only the proposer's plans compete.
    """
    config = model.config
    k, warm = config.estep_top_k, step >= config.estep_warmup_steps
    sources = config.estep_sources if warm else [s for s in config.estep_sources if s in ("proposer", "previous")]
    width = max(model.config.concept_max_lengths)
    fit = lambda z: torch.nn.functional.pad(z, (0, width - z.shape[-1]), value=CONCEPT_PAD)  # noqa: E731
    pools = []
    if previous is not None and "previous" in sources:
        pools.append(fit(previous)[:, None])
    if "proposer" in sources:
        pools.append(proposer(batch["text_ids"], batch["text_attention_mask"]))
    u, u_mask = batch["input_ids"], batch["attention_mask"]
    if "planner_greedy" in sources:
        pools.append(fit(model.plan(u, u_mask))[:, None])
    if "planner_sample" in sources:
        samples = model.plan(u.repeat_interleave(k, 0), u_mask.repeat_interleave(k, 0), do_sample=True,
                             generator=generator)
        pools.append(fit(samples).view(u.shape[0], k, samples.shape[1], width))
    candidates = torch.cat(pools, 1)
    scores = score_candidates(model, batch, candidates,
                              prior_weight(step, config.estep_warmup_steps, config.estep_prior_weight))
    if previous is not None and "previous" in sources and has_previous is not None:
        scores[:, 0] = scores[:, 0].masked_fill(~has_previous, float("-inf"))
    best = scores.argmax(1)
    return candidates[torch.arange(len(best)), best], scores, candidates


class ConceptCache:
    """z* per example index with the step of its last search (−1: never) and its score then (v3.1)."""

    def __init__(self, size: int, types: int, width: int):
        self.plans = torch.zeros(size, types, width, dtype=torch.long)
        self.step = torch.full((size,), -1, dtype=torch.long)

    def stale(self, index: torch.Tensor, step: int, every: int) -> torch.Tensor:
        age = step - self.step[index]
        return (self.step[index] < 0) | (age >= every)

    def update(self, index: torch.Tensor, plans: torch.Tensor, step: int) -> None:
        self.plans[index] = plans.cpu()
        self.step[index] = step

    def save(self, directory: str | Path) -> None:
        torch.save({"plans": self.plans, "step": self.step}, Path(directory) / CACHE_FILE)

    def load(self, directory: str | Path) -> bool:
        path = Path(directory) / CACHE_FILE
        if not path.is_file():
            return False
        state = torch.load(path)
        self.plans, self.step = state["plans"], state["step"]
        return True


class SaveConceptCache(TrainerCallback):
    """Write the z* cache into each checkpoint directory, so ``resume_from_checkpoint`` continues with it."""

    def __init__(self, cache: ConceptCache):
        self.cache = cache

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # every rank holds the same cache (see ``PlannerExecutorTrainer.share``)
            self.cache.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")


class ProcessStatAccumulator(StatAccumulator):
    """Means over every process's batches, so a monitor describes the global batch, not rank 0's (H6)."""

    def means(self, prefix: str = "") -> dict[str, float]:
        totals = sum_across_processes({**{("sum", k): float(v) for k, v in self.sums.items()},
                                       **{("count", k): float(c) for k, c in self.counts.items()}})
        names = {name for _, name in totals}
        self.sums = {name: torch.tensor(totals.get(("sum", name), 0.0)) for name in names}
        self.counts = {name: torch.tensor(totals.get(("count", name), 0.0)) for name in names}
        return super().means(prefix)


# -- the trainer -----------------------------------------------------------------------------------------------------
class PlannerExecutorTrainer(Trainer):
    """Hard-EM (P4): E-step for stale examples, then the model's M-step losses; monitors collected on the way."""

    def __init__(self, *args, proposer: RareCharacterProposer, cache: ConceptCache, curriculum_start: int = 16,
                 curriculum_steps: int = 0, monitor_patience: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.proposer, self.cache = proposer, cache
        self.curriculum_start, self.curriculum_steps = curriculum_start, curriculum_steps
        self.losses, self.stats = ProcessStatAccumulator(), ProcessStatAccumulator()
        config = self.model.config
        monitor_batch = collate([self.train_dataset[i] for i in range(min(config.monitor_batch_size, len(self.train_dataset)))])
        self.monitor_batch = {k: v.to(self.args.device) for k, v in monitor_batch.items()}
        self.monitor = PlannerMonitorCallback(config.monitor_steps, config.concept_vocab_sizes, self.stats,
                                              nll_fn=self.monitor_nll, plans_fn=self.monitor_plans,
                                              patience=monitor_patience)
        self.add_callback(self.monitor)
        self.add_callback(SaveConceptCache(cache))

    def _get_train_sampler(self, train_dataset=None):
        """One draw of the global batch per optimizer step: accelerate hands each rank its share of it, so
        the curriculum follows the global step whatever the number of processes (H6)."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        args = self.args
        global_batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
        return CurriculumSampler([len(y) for y in dataset["y_ids"]], global_batch, args.max_steps,
                                 self.curriculum_start, self.curriculum_steps, args.seed)

    @torch.no_grad()
    def monitor_plans(self) -> torch.Tensor:
        return estep(self.model, self.proposer, self.monitor_batch, self.state.global_step)[0]

    @torch.no_grad()
    def monitor_nll(self, concept_ids: torch.Tensor) -> torch.Tensor:
        batch = self.monitor_batch
        return self.model.executor_forward(concept_ids, batch["text_ids"], batch["text_attention_mask"]).loss

    def refresh(self, model, inputs: dict) -> torch.Tensor:
        """z* for the batch: cached where fresh, searched (E-step) where stale; records the B-monitors.

        The rank that sees an example searches its z*; ``share`` then copies the batch's entries to every
        rank, so all ranks hold the same cache (what a single process would hold) and it survives a resume.
        """
        plans = self.search_stale(self.accelerator.unwrap_model(model), inputs)
        self.share(inputs["index"], plans)
        return plans

    def share(self, index: torch.Tensor, plans: torch.Tensor) -> None:
        """Copy every rank's (index, z*, step searched) of this step into every rank's cache (no-op on one)."""
        if self.accelerator.num_processes == 1:
            return
        steps = self.cache.step[index.cpu()].to(plans.device)
        index, plans, steps = self.accelerator.gather((index, plans, steps))
        self.cache.plans[index.cpu()] = plans.cpu()
        self.cache.step[index.cpu()] = steps.cpu()

    def search_stale(self, model, inputs: dict) -> torch.Tensor:
        index = inputs["index"].cpu()
        step = self.state.global_step
        stale = self.cache.stale(index, step, model.config.estep_refresh_steps)  # (batch,) on CPU
        plans = self.cache.plans[index].to(inputs["input_ids"].device)
        if not bool(stale.any()):
            return plans
        seen = self.cache.step[index[stale]] >= 0  # these have a z*_old to compare with
        rows = stale.to(plans.device)
        old = plans[rows]
        seen = seen.to(plans.device)
        new, scores, _ = estep(model, self.proposer, {k: v[rows] for k, v in inputs.items() if k != "index"}, step,
                               previous=old, has_previous=seen)
        plans[rows] = new
        self.cache.update(index[stale], new, step)
        self.stats.add("top1_margin", top1_margin(scores))
        if bool(seen.any()) and "previous" in model.config.estep_sources:  # z*_old is candidate column 0
            self.stats.add("flip_rate", flip_rate(old[seen], new[seen]))
            self.stats.add("flip_edit_distance", edit_distance(old[seen], new[seen]).float().mean())
            self.stats.add("staleness_gap", staleness_gap(scores.max(1).values[seen], scores[seen, 0]))
        return plans

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        plans = self.refresh(model, inputs)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], concept_ids=plans,
                        text_ids=inputs["text_ids"], text_attention_mask=inputs["text_attention_mask"])
        self.losses.add("executor_loss", outputs.executor_loss)
        self.losses.add("planner_loss", outputs.planner_loss)
        self.collect_monitors(outputs, plans, inputs["text_attention_mask"].bool())
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def collect_monitors(self, outputs, plans: torch.Tensor, text_valid: torch.Tensor) -> None:
        """C- and D-monitors from the M-step's own tensors (no extra forward)."""
        lengths = concept_slot_mask(plans).sum(-1, keepdim=True)  # (batch, types, 1)
        counted = torch.arange(plans.shape[-1] + 1, device=plans.device) <= lengths  # concepts and each <eos>
        entropy, max_prob = planner_entropy(outputs.planner_logits.detach(), counted)
        self.stats.add("planner_entropy", entropy)
        self.stats.add("planner_max_prob", max_prob)
        self.stats.add("soft_hard_cosine", outputs.soft_hard_cosine)
        buckets = nll_by_position(outputs.token_nll.detach(), text_valid, self.model.config.position_buckets)
        for name, value in buckets.items():
            self.stats.add(name, value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Component losses (means since the last log) and the monitors' readings join every log line (H6)."""
        if "loss" in logs:
            logs.update(self.losses.means())
        logs.update(self.monitor.pop_pending())
        super().log(logs, start_time)


# -- command line ----------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_run_dir="runs/planner", max_steps=1000, batch_size=16, lr=1e-3,
                         lr_scheduler="constant_with_warmup")
    parser.add_argument("--hidden-size", type=positive_int, default=128)
    parser.add_argument("--planner-layers", type=positive_int, default=2)
    parser.add_argument("--executor-layers", type=positive_int, default=3)
    parser.add_argument("--concept-gradient", default="hard_em", choices=["hard_em", "straight_through", "soft_mixture"])
    parser.add_argument("--keyword-vocab", type=positive_int, default=512)
    parser.add_argument("--keywords", type=positive_int, default=8, help="longest keyword plan")
    parser.add_argument("--clauses", type=positive_int, default=6, help="longest shape plan")
    parser.add_argument("--mtp-heads", type=int, default=0)
    parser.add_argument("--estep-top-k", type=positive_int, default=4)
    parser.add_argument("--refresh-steps", type=positive_int, default=50, help="M: z* age before a new search")
    parser.add_argument("--warmup-estep", type=int, default=100, help="W: proposer-only E-step, β ramp (steps)")
    parser.add_argument("--prior-weight", type=float, default=1.0, help="β_max of S(z) (1 as in SPEC P4)")
    parser.add_argument("--monitor-steps", type=positive_int, default=50, help="N: steps between monitor readings")
    parser.add_argument("--max-input-length", type=positive_int, default=96)
    parser.add_argument("--max-text-length", type=positive_int, default=64)
    parser.add_argument("--max-pairs", type=int, default=None, help="use only the first N training pairs")
    parser.add_argument("--curriculum-start", type=positive_int, default=16)
    parser.add_argument("--curriculum-steps", type=int, default=None, help="default: half of --max-steps")


def build_config(args: argparse.Namespace, tokenizer) -> PlannerExecutorConfig:
    stack = lambda layers: dict(hidden_size=args.hidden_size, num_hidden_layers=layers,  # noqa: E731
                                num_attention_heads=max(1, args.hidden_size // 32),
                                num_key_value_heads=max(1, args.hidden_size // 64),
                                intermediate_size=args.hidden_size * 11 // 4)
    return PlannerExecutorConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, concept_types=["keywords", "shape"],
        concept_vocab_sizes=[args.keyword_vocab, 16], concept_max_lengths=[args.keywords, args.clauses],
        max_input_length=args.max_input_length, max_text_length=args.max_text_length,
        planner=stack(args.planner_layers), executor=stack(args.executor_layers), planner_mtp_heads=args.mtp_heads,
        concept_gradient=args.concept_gradient, estep_top_k=args.estep_top_k,
        estep_refresh_steps=args.refresh_steps, estep_warmup_steps=args.warmup_estep,
        estep_prior_weight=args.prior_weight, monitor_steps=args.monitor_steps)


def load_pairs(args: argparse.Namespace, tokenizer, split: str = "train") -> datasets.Dataset:
    pairs = build_pairs(load_corpus(args.data)[split], tokenizer, args.max_input_length, args.max_text_length)
    return pairs.select(range(min(args.max_pairs, len(pairs)))) if args.max_pairs else pairs


def run(args: argparse.Namespace) -> dict:
    """Train (or resume) with hard-EM, export the run directory; returns the manifest."""
    run_dir = prepare_run_dir(args.run_dir)
    with main_process_first():  # under accelerate/torchrun: prepared once, the other ranks read the caches
        tokenizer = resolve_tokenizer(args.tokenizer)
        pairs = load_pairs(args, tokenizer)
    set_seed(args.seed)
    config = build_config(args, tokenizer)
    model = PlannerExecutorModel(config)
    model.generation_config = GenerationConfig(max_new_tokens=args.max_text_length, do_sample=False,
                                               bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    cache = ConceptCache(len(pairs), config.num_concept_types, max(config.concept_max_lengths))
    resume = resume_checkpoint(args, run_dir)
    if resume:
        cache.load(resume)
    trainer = PlannerExecutorTrainer(
        model=model, args=training_arguments(args, run_dir, remove_unused_columns=False),
        train_dataset=pairs, data_collator=collate, callbacks=[TimeBudgetCallback(args.budget)],
        proposer=RareCharacterProposer(config, tokenizer), cache=cache, curriculum_start=args.curriculum_start,
        curriculum_steps=args.max_steps // 2 if args.curriculum_steps is None else args.curriculum_steps)
    result = trainer.train(resume_from_checkpoint=resume)
    manifest = {
        "system": "planner", "data": args.data, "pairs": len(pairs), "steps": trainer.state.global_step,
        "train_loss": result.training_loss, "concept_gradient": args.concept_gradient, "seed": args.seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "datasets": corpus_sources(args.data),
        "monitor_warnings": [{"step": s, "rule": r, "action": a} for s, r, a in trainer.monitor.warnings],
        "usage_snippet": USAGE.format(model_id=str(run_dir)),
    }

    export_model_run(run_dir, trainer.model, tokenizer, manifest,
                     extra_files={TRAINER_LOG: json.dumps(trainer.state.log_history, indent=1)})
    announce(f"planner: {trainer.state.global_step} steps, train loss {result.training_loss:.3f} → {run_dir}")
    return manifest


def generate_cli(args: argparse.Namespace) -> list[str]:
    """`genlab generate --model RUN_DIR U…`: each u, its plan and the text written from it."""
    from ..tokenization import load_tokenizer

    model = PlannerExecutorModel.from_pretrained(args.model).eval()
    tokenizer = load_tokenizer(args.model)
    batch = tokenizer(args.prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    out = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=args.max_new_tokens,
                         do_sample=not args.greedy, return_concepts=True)
    texts = tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
    return [f"{u}\t{plan}\t{text}" for u, plan, text in zip(args.prompts, out.concept_ids.tolist(), texts)]
