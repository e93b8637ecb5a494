"""`genlab train planner`: training of the concept-first planner–executor (SPEC P4–P7, H6).

The data and curriculum live in ``planner_data``, the proposer, the E-step and the z* store in
``planner_estep``, the monitors in ``planner_monitors``; this module is the Trainer and the recipe.
``--concept-gradient hard_em`` (default): E-step, then the M-step = the model's forward, executor on (z*, y) and
planner on (u, z*). ``straight_through`` / ``soft_mixture``: no E-step; the model's forward plans from u itself
and trains the planner through the executor (``PlannerExecutorModel.relaxed_forward``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets
import torch
from transformers import GenerationConfig, Trainer, TrainerCallback, TrainingArguments, set_seed

from ..configuration_planner import (CONCEPT_GRADIENTS, DEFAULT_ESTEP_SOURCES, ESTEP_SELECTIONS, ESTEP_WARMUP_ENDS,
                                     PROPOSERS, PlannerExecutorConfig)
from ..data import corpus_sources
from ..distributed import main_process_first, sum_across_processes
from ..modeling_planner import PlannerExecutorModel
from ..runs import RunDir, export_model_run, prepare_run_dir
from ..tokenization import load_tokenizer, resolve_tokenizer
from .callbacks import TimeBudgetCallback, WindowedMetrics
from .common import (TrainConfig, announce, check_choice, check_positive, default_training_arguments,
                     finalize_training_arguments, resume_checkpoint, run_training)
from .planner_data import TASKS, CurriculumSampler, collate, task_texts, tokenize_pairs
from .planner_estep import (EStep, GainWindow, SaveZStarStore, ZStarStore, estep, gain_and_cost, make_proposer,
                            win_rates)
from .planner_monitors import (PlannerMonitorCallback, StatAccumulator, edit_distance, flip_rate, nll_by_position,
                               planner_entropy, staleness_gap, top1_margin)

TRAINING_DEFAULTS = dict(max_steps=1000, learning_rate=1e-3, lr_scheduler_type="constant_with_warmup")
USAGE = """from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained({model_id!r}, trust_remote_code=True)
model = AutoModel.from_pretrained({model_id!r}, trust_remote_code=True)
u = tokenizer(["新华社北京一月一日电。"], add_special_tokens=False, return_tensors="pt")
out = model.generate(u["input_ids"], u["attention_mask"], max_new_tokens=40, return_concepts=True)
print(out.concept_ids.tolist())  # (batch, types, max length): the plan
print(tokenizer.batch_decode(out.sequences, skip_special_tokens=True))
"""


@dataclass
class PlannerTrainConfig(TrainConfig):
    """`genlab train planner`: the planner–executor's options besides `TrainingArguments`."""

    run_dir: str = field(default="runs/planner", metadata={"help": "where the checkpoint and logs go"})
    hidden_size: int = field(default=128, metadata={"help": "width of the planner and the executor"})
    planner_layers: int = field(default=2, metadata={"help": "planner decoder layers"})
    executor_layers: int = field(default=3, metadata={"help": "executor decoder layers"})
    concept_gradient: str = field(default="hard_em", metadata={
        "choices": list(CONCEPT_GRADIENTS),
        "help": "hard_em: E-step + M-step; straight_through / soft_mixture: no E-step, the planner plans from u and "
                "learns through the executor's gradient (Gumbel-softmax ST, or the executor reads the soft mixture)"})
    concept_temperature: float = field(default=1.0, metadata={
        "help": "τ of the straight-through / soft-mixture relaxations"})
    task: str = field(default="next_sentence", metadata={"choices": list(TASKS), "help": "built-in (u, y) task"})
    pairs: str | None = field(default=None, metadata={
        "help": "a JSONL file of {\"u\": ..., \"y\": ...} rows: your own task (replaces --task)"})
    proposer: str = field(default="rare_characters", metadata={
        "choices": list(PROPOSERS),
        "help": "q(z|y) of the E-step; keywords: y's characters found in u, un-hashed; learned: an encoder over y "
                "with a discrete bottleneck, trained with the executor (no hand-made keywords)"})
    posterior_kl_weight: float = field(default=1.0, metadata={
        "help": "weight of KL(q(z|y) ‖ p(z|u)) in the learned proposer's loss (1: the ELBO)"})
    estep_selection: str = field(default="likelihood", metadata={
        "choices": list(ESTEP_SELECTIONS),
        "help": "z* = argmax log p(y|z), S(z) breaking ties (likelihood), or argmax S(z) as in P4 (joint: "
                "collapses onto the planner's own plans, README)"})
    entropy_bonus: float = field(default=0.0, metadata={
        "help": "λ: the M-step subtracts λ × the planner's mean entropy per slot (keeps it from locking in; 0 = off)"})
    warmup_end: str = field(default="steps", metadata={
        "choices": list(ESTEP_WARMUP_ENDS),
        "help": "when the planner's plans join the E-step: at step W (steps), or from W on once the executor's gain "
                "from z* exceeds the plan's prior cost (gain)"})
    z_dropout: float = field(default=0.0, metadata={
        "help": "p: the executor reads z* with each concept masked with this probability (0 = off)"})
    diverse_beam: float = field(default=0.0, metadata={
        "help": "λ > 0: the planner's E-step candidates also include --estep-top-k plans of a diverse beam search "
                "with this Hamming penalty (0 = off)"})
    executor_copy: bool = field(default=False, metadata={
        "help": "a pointer-generator head: the executor may copy the plan's keywords into the text (keywords and "
                "learned proposers, whose concepts are text tokens)"})
    planner_copy: bool = field(default=False, metadata={
        "help": "a pointer-generator head on the planner: it may copy u's tokens into the plan (keywords and learned "
                "proposers)"})
    checklist: bool = field(default=False, metadata={
        "help": "the executor's copy head also reads which of the plan's keywords the text already holds (needs "
                "--executor-copy)"})
    plan_words: bool = field(default=False, metadata={
        "help": "keyword plans keep u's words whole: the words of u that y holds, in u's order, \"、\" between them "
                "(--proposer keywords; characters without word boundaries otherwise)"})
    input_plans: bool = field(default=False, metadata={
        "help": "the E-step also scores the plan of u itself (every keyword of u, source 'input'; --proposer "
                "keywords): with --estep-selection joint a plan the planner can predict may win over y's"})
    unlikelihood: float = field(default=0.0, metadata={
        "help": "α: the M-step adds α × the token-level unlikelihood of tokens already written, in the text and in "
                "text-concept plans (against greedy loops; 0 = off)"})
    share_text_embeddings: bool = field(default=True, metadata={
        "help": "one text embedding table for the planner and the executor (--no-share-text-embeddings: two)"})
    keyword_vocab: int = field(default=512, metadata={"help": "keyword concept vocabulary (rare_characters)"})
    keywords: int = field(default=8, metadata={"help": "longest keyword plan"})
    clauses: int = field(default=6, metadata={"help": "longest shape plan"})
    mtp_heads: int = field(default=0, metadata={"help": "multi-token-prediction heads of the planner"})
    estep_top_k: int = field(default=4, metadata={"help": "planner samples and proposer granularities per E-step"})
    refresh_steps: int = field(default=50, metadata={"help": "M: z* age before a new search"})
    warmup_estep: int = field(default=100, metadata={"help": "W: proposer-only E-step, β ramp (steps)"})
    prior_weight: float = field(default=1.0, metadata={"help": "β_max of S(z) (1 as in SPEC P4)"})
    monitor_steps: int = field(default=50, metadata={"help": "N: steps between monitor readings"})
    max_input_length: int = field(default=96, metadata={"help": "longest u, in tokens"})
    max_text_length: int = field(default=64, metadata={"help": "longest y, in tokens"})
    max_pairs: int | None = field(default=None, metadata={"help": "use only the first N training pairs"})
    curriculum_start: int = field(default=16, metadata={"help": "longest y at step 0"})
    curriculum_steps: int | None = field(default=None, metadata={"help": "curriculum ramp (default: half of max-steps)"})

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "concept_gradient", CONCEPT_GRADIENTS)
        check_choice(self, "task", TASKS)
        check_choice(self, "proposer", PROPOSERS)
        check_choice(self, "estep_selection", ESTEP_SELECTIONS)
        check_choice(self, "warmup_end", ESTEP_WARMUP_ENDS)
        if self.entropy_bonus < 0:
            raise ValueError(f"--entropy-bonus: must be ≥ 0, got {self.entropy_bonus}")
        if self.unlikelihood < 0:
            raise ValueError(f"--unlikelihood: must be ≥ 0, got {self.unlikelihood}")
        if not 0 <= self.z_dropout < 1:
            raise ValueError(f"--z-dropout: must be in [0, 1), got {self.z_dropout}")
        for flag in ("executor_copy", "planner_copy"):
            if getattr(self, flag) and self.proposer == "rare_characters":
                raise ValueError(f"--{flag.replace('_', '-')} copies text tokens: use --proposer keywords or learned "
                                 "(rare_characters concepts are hashed ids, not text tokens)")
        if self.checklist and not self.executor_copy:
            raise ValueError("--checklist tracks the executor's copy head: it needs --executor-copy")
        if self.input_plans and self.proposer != "keywords":
            raise ValueError(f"--input-plans are the keywords proposer's plans of u: it needs --proposer keywords, "
                             f"got {self.proposer!r}")
        if self.plan_words and self.proposer != "keywords":
            raise ValueError(f"--plan-words shapes the keywords proposer's plans: it needs --proposer keywords, got "
                             f"{self.proposer!r}")
        if self.diverse_beam < 0:
            raise ValueError(f"--diverse-beam: must be ≥ 0, got {self.diverse_beam}")
        if self.posterior_kl_weight < 0:
            raise ValueError(f"--posterior-kl-weight: must be ≥ 0, got {self.posterior_kl_weight}")
        check_positive(self, "hidden_size", "planner_layers", "executor_layers", "keyword_vocab", "keywords",
                       "concept_temperature", "clauses", "estep_top_k", "refresh_steps", "monitor_steps", "max_input_length",
                       "max_text_length", "curriculum_start")


class ProcessStatAccumulator(StatAccumulator):
    """Means over every process's batches, so a monitor describes the global batch, not rank 0's (H6)."""

    def means(self, prefix: str = "") -> dict[str, float]:
        totals = sum_across_processes({**{("sum", k): float(v) for k, v in self.sums.items()},
                                       **{("count", k): float(c) for k, c in self.counts.items()}})
        names = {name for _, name in totals}
        self.sums = {name: torch.tensor(totals.get(("sum", name), 0.0)) for name in names}
        self.counts = {name: torch.tensor(totals.get(("count", name), 0.0)) for name in names}
        return super().means(prefix)


class PlannerExecutorTrainer(Trainer):
    """Hard-EM (P4): E-step for stale examples, then the model's M-step losses; monitors collected on the way. A
    straight-through or soft-mixture model skips the E-step: its forward plans from u itself."""

    def __init__(self, *args, proposer, store: ZStarStore, curriculum_start: int = 16,
                 curriculum_steps: int = 0, monitor_patience: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.proposer, self.store = proposer, store
        self.gain_window = GainWindow(self.model.config)
        self.curriculum_start, self.curriculum_steps = curriculum_start, curriculum_steps
        self.stats = ProcessStatAccumulator()
        config = self.model.config
        monitor_batch = collate([self.train_dataset[i] for i in range(min(config.monitor_batch_size, len(self.train_dataset)))])
        self.monitor_batch = {k: v.to(self.args.device) for k, v in monitor_batch.items()}
        self.monitor = PlannerMonitorCallback(config.monitor_steps, config.concept_vocab_sizes, self.stats,
                                              nll_fn=self.monitor_nll, plans_fn=self.monitor_plans,
                                              patience=monitor_patience, grace_steps=config.estep_warmup_steps,
                                              soft_path=config.concept_gradient != "hard_em")
        self.add_callback(self.monitor)
        self.metrics = WindowedMetrics(extras=lambda step: self.monitor.pop_pending()).install(self)
        self.add_callback(SaveZStarStore(store))

    def _get_train_sampler(self, train_dataset=None):
        """One draw of the global batch per optimizer step: accelerate hands each rank its share of it, so
        the curriculum follows the global step whatever the number of processes (H6)."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        args = self.args
        global_batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
        return CurriculumSampler([len(y) for y in dataset["y_ids"]], global_batch, args.max_steps,
                                 self.curriculum_start, self.curriculum_steps, args.seed)

    @property
    def hard_em(self) -> bool:
        return self.model.config.concept_gradient == "hard_em"

    @torch.no_grad()
    def monitor_plans(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The monitor batch's z and what the executor reads of it: hard-EM's z* (its ids), or the planner's own
        noise-free relaxed plan (ids and embeddings) — each the executor's training input."""
        batch, step = self.monitor_batch, self.state.global_step
        if self.hard_em:
            return estep(self.model, self.proposer, batch, step, warm=self.store.warm(self.model.config, step))[0], None
        return self.model.relaxed_plan(batch["input_ids"], batch["attention_mask"])[:2]

    @torch.no_grad()
    def monitor_nll(self, concept_ids: torch.Tensor, concept_embeds: torch.Tensor | None) -> torch.Tensor:
        batch = self.monitor_batch
        return self.model.executor_forward(concept_ids, batch["text_ids"], batch["text_attention_mask"],
                                           concept_embeds).loss

    def refresh(self, model, inputs: dict) -> torch.Tensor:
        """z* for the batch: cached where fresh, searched (E-step) where stale; records the B-monitors.

        The rank that sees an example searches its z*; ``share`` then copies the batch's entries to every
        rank, so all ranks hold the same store (what a single process would hold) and it survives a resume.
        """
        plans = self.search_stale(self.accelerator.unwrap_model(model), inputs)
        self.share(inputs["index"], plans)
        return plans

    def share(self, index: torch.Tensor, plans: torch.Tensor) -> None:
        """Copy every rank's (index, z*, step searched) of this step into every rank's cache (no-op on one)."""
        if self.accelerator.num_processes == 1:
            return
        steps = self.store.step[index.cpu()].to(plans.device)
        index, plans, steps = self.accelerator.gather((index, plans, steps))
        self.store.plans[index.cpu()] = plans.cpu()
        self.store.step[index.cpu()] = steps.cpu()

    def search_stale(self, model, inputs: dict) -> torch.Tensor:
        index = inputs["index"].cpu()
        step = self.state.global_step
        stale = self.store.stale(index, step, model.config.estep_refresh_steps)  # (batch,) on CPU
        plans = self.store.plans[index].to(inputs["input_ids"].device)
        if not bool(stale.any()):
            return plans
        seen = self.store.step[index[stale]] >= 0  # these have a z*_old to compare with
        rows = stale.to(plans.device)
        old = plans[rows]
        seen = seen.to(plans.device)
        batch = {k: v[rows] for k, v in inputs.items() if k != "index"}
        warm = self.store.warm(model.config, step)
        result = estep(model, self.proposer, batch, step, previous=old, has_previous=seen, warm=warm)
        new, scores = result.plans, result.scores
        if not warm and model.config.estep_warmup_end == "gain":
            self.watch_gain(model, batch, result, step)
        plans[rows] = new
        self.store.update(index[stale], new, step)
        self.stats.add("top1_margin", top1_margin(scores))
        for name, rate in win_rates(result).items():
            self.stats.add(name, rate)
        if bool(seen.any()) and "previous" in model.config.estep_sources:  # z*_old is candidate column 0
            self.stats.add("flip_rate", flip_rate(old[seen], new[seen]))
            self.stats.add("flip_edit_distance", edit_distance(old[seen], new[seen]).float().mean())
            self.stats.add("staleness_gap", staleness_gap(scores.max(1).values[seen], scores[seen, 0]))
        return plans

    def watch_gain(self, model, batch: dict, result: EStep, step: int) -> None:
        """Warm-up by gain: log the window's gain and cost of z*, end the warm-up once the gain is larger."""
        mean_gain, mean_cost = self.gain_window.observe(step, *gain_and_cost(model, batch, result))
        self.stats.add("warmup_gain", torch.tensor(mean_gain))
        self.stats.add("warmup_cost", torch.tensor(mean_cost))
        if self.gain_window.ends(step, mean_gain, mean_cost):
            self.store.warmup_ended_at = step

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        plans = self.refresh(model, inputs) if self.hard_em else None  # relaxed models plan inside their forward
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], concept_ids=plans,
                        text_ids=inputs["text_ids"], text_attention_mask=inputs["text_attention_mask"])
        for name in ("executor_loss", "planner_loss", "posterior_loss", "posterior_kl", "unlikelihood_loss"):
            if getattr(outputs, name) is not None:
                self.metrics.add(name, getattr(outputs, name).detach())
        self.metrics.step_done()
        self.collect_monitors(outputs, inputs["text_attention_mask"].bool())
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def collect_monitors(self, outputs, text_valid: torch.Tensor) -> None:
        """C- and D-monitors from the training step's own tensors (no extra forward)."""
        entropy, max_prob = planner_entropy(outputs.planner_logits.detach(), outputs.planner_slots)
        self.stats.add("planner_entropy", entropy)
        self.stats.add("planner_max_prob", max_prob)
        self.stats.add("soft_hard_cosine", outputs.soft_hard_cosine)
        buckets = nll_by_position(outputs.token_nll.detach(), text_valid, self.model.config.position_buckets)
        for name, value in buckets.items():
            self.stats.add(name, value)


def build_config(config: PlannerTrainConfig, tokenizer) -> PlannerExecutorConfig:
    width = config.hidden_size
    stack = lambda layers: dict(hidden_size=width, num_hidden_layers=layers,  # noqa: E731
                                num_attention_heads=max(1, width // 32), num_key_value_heads=max(1, width // 64),
                                intermediate_size=width * 11 // 4)
    if config.proposer in ("keywords", "learned"):  # concepts are characters: one text concept type
        types = dict(concept_types=["keywords"], concept_vocab_sizes=[len(tokenizer)],
                     concept_max_lengths=[config.keywords], text_concept_types=["keywords"])
    else:
        types = dict(concept_types=["keywords", "shape"], concept_vocab_sizes=[config.keyword_vocab, 16],
                     concept_max_lengths=[config.keywords, config.clauses])
    return PlannerExecutorConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **types, proposer=config.proposer,
        posterior_kl_weight=config.posterior_kl_weight,
        share_text_embeddings=config.share_text_embeddings,
        estep_selection=config.estep_selection, estep_warmup_end=config.warmup_end,
        planner_entropy_weight=config.entropy_bonus, estep_diversity_penalty=config.diverse_beam,
        executor_z_dropout=config.z_dropout, executor_copy=config.executor_copy,
        planner_copy=config.planner_copy, unlikelihood_weight=config.unlikelihood,
        executor_checklist=config.checklist,
        plan_separator_id=tokenizer.convert_tokens_to_ids("、") if config.plan_words else None,
        estep_sources=[*DEFAULT_ESTEP_SOURCES, *(["planner_beam"] if config.diverse_beam > 0 else []),
                       *(["input"] if config.input_plans else [])],
        max_input_length=config.max_input_length, max_text_length=config.max_text_length,
        planner=stack(config.planner_layers), executor=stack(config.executor_layers),
        planner_mtp_heads=config.mtp_heads, concept_gradient=config.concept_gradient,
        concept_temperature=config.concept_temperature, estep_top_k=config.estep_top_k,
        estep_refresh_steps=config.refresh_steps, estep_warmup_steps=config.warmup_estep,
        estep_prior_weight=config.prior_weight, monitor_steps=config.monitor_steps)


def load_pairs(config: PlannerTrainConfig, tokenizer, split: str = "train") -> datasets.Dataset:
    us, ys = task_texts(config.task, split, config.data, config.pairs)
    pairs = tokenize_pairs(us, ys, tokenizer, config.max_input_length, config.max_text_length)
    return pairs.select(range(min(config.max_pairs, len(pairs)))) if config.max_pairs else pairs


def train_planner(config: PlannerTrainConfig, training: TrainingArguments | None = None,
                  callbacks: Sequence[TrainerCallback] = ()) -> RunDir:
    """Train (or resume) by ``config.concept_gradient``, export the run directory."""
    training = training or default_training_arguments(TRAINING_DEFAULTS)
    run_dir = prepare_run_dir(config.run_dir)
    with main_process_first():  # under accelerate/torchrun: prepared once, the other ranks read the caches
        tokenizer = resolve_tokenizer(config.tokenizer)
        pairs = load_pairs(config, tokenizer)
    set_seed(training.seed)
    model_config = build_config(config, tokenizer)
    model = PlannerExecutorModel(model_config)
    model.generation_config = GenerationConfig(max_new_tokens=config.max_text_length, do_sample=False,
                                               bos_token_id=model_config.bos_token_id,
                                               eos_token_id=model_config.eos_token_id,
                                               pad_token_id=model_config.pad_token_id)
    store = ZStarStore(len(pairs), model_config.num_concept_types, max(model_config.concept_max_lengths))
    resume = resume_checkpoint(config, run_dir)
    if resume:
        store.load(resume)
    curriculum_steps = training.max_steps // 2 if config.curriculum_steps is None else config.curriculum_steps
    trainer = PlannerExecutorTrainer(
        model=model, args=finalize_training_arguments(training, run_dir, remove_unused_columns=False),
        train_dataset=pairs, data_collator=collate, callbacks=[TimeBudgetCallback(config.budget), *callbacks],
        proposer=make_proposer(model, tokenizer), store=store,
        curriculum_start=config.curriculum_start, curriculum_steps=curriculum_steps)
    result = run_training(trainer, resume)
    manifest = {
        "system": "planner", "data": config.data, "task": config.task, "pairs_file": config.pairs,
        "pairs": len(pairs), "steps": trainer.state.global_step,
        "train_loss": result.training_loss, "concept_gradient": config.concept_gradient, "seed": training.seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "datasets": corpus_sources(config.data),
        "monitor_warnings": [{"step": s, "rule": r, "action": a} for s, r, a in trainer.monitor.warnings],
        "estep_warmup_ended_at": store.warmup_ended_at if config.warmup_end == "gain" else config.warmup_estep,
        "usage_snippet": USAGE.format(model_id=str(run_dir)),
    }

    export_model_run(run_dir, trainer.model, tokenizer, manifest)
    announce(f"planner: {trainer.state.global_step} steps, train loss {result.training_loss:.3f} → {run_dir}")
    return RunDir(run_dir, manifest)


def generate_texts(run_dir: str, prompts: list[str], max_new_tokens: int, greedy: bool) -> list[str]:
    """`genlab generate --model RUN_DIR U…`: each u, its plan and the text written from it."""
    model = PlannerExecutorModel.from_pretrained(run_dir).eval()
    tokenizer = load_tokenizer(run_dir)
    batch = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    out = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens,
                         do_sample=not greedy, return_concepts=True)
    texts = tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
    return [f"{u}\t{plan}\t{text}" for u, plan, text in zip(prompts, out.concept_ids.tolist(), texts)]
