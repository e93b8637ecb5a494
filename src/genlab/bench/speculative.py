"""`genlab bench speculative --cloud tiny|smollm2|gemma3`: edge/cloud decoding on a real pair (SPEC S1–S6, B).

The cloud is a built-in pretrained model (``smollm2``: English, ``pydocs`` prompts; ``gemma3``: Chinese, corpus
prompts; see ``genlab.clouds``) or ``tiny`` (an AR run trained here, for regressions); the edge is its first
layers distilled with a frequency-trimmed head (``genlab train edge``; ``genlab.prepare`` makes it when missing).
Every decoder gets the same pair, the CJK processor stack, one-sentence stopping and ``max_new_tokens``; greedy.

- **Speed** (test prompts, batch 1, one thread, timed interleaved per prompt after a warm-up; ratios of pooled
  seconds): cloud-only ``generate``, genlab lossless (fixed k, and dynamic: stop drafting below confidence 0.4),
  HF ``assistant_model`` with its default dynamic drafting and with the same fixed k, the edge alone and the
  gated presets; lossless vs cloud-only also at ``batch_size`` (left-padded rows).
- **Exactness**: lossless output == cloud-only on every prompt; acceptance (committed accepted / verified) and
  tokens per block.
- **Edge cost ratio**: one cached decoding step of the edge (trimmed head) over one of the cloud, median paired.
- **Gate curve** on VALIDATION prompts: cloud-call rate and agreement (share of generated tokens equal to the
  cloud's processed greedy choice given the same prefix) per threshold in nats/token. The fluency threshold is
  the largest with agreement ≥ 0.95 there, the quality one the largest with ≥ 0.98; the test prompts report
  them (``gated_*``, ``quality_*``), and the library presets were set from the SmolLM2 curve.
- **Latency under a simulated network**: every cloud call pays a round trip plus the uplink of the tokens it
  sends (4 bytes each) at ``uplink_mbps``; cloud-only decoding is one call per token (the device holds the
  context, as in U-HLM's setting). Per-token latency = measured compute + simulated network, for edge-only,
  cloud-only, lossless and gated, at each RTT.
- **S6 text metrics** (Chinese cloud, sampling T 0.7, fluency preset): punctuation density, CJK 3-gram repeats
  and adjacent-identical rate with the processors on vs off.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import evaluate
import torch
from transformers import AutoModelForCausalLM, LogitsProcessorList, set_seed

from ..clouds import CLOUDS, load_cloud
from ..data import load_corpus
from ..generation_speculative import _IncrementalModel, edge_cloud_generate
from ..logits_process import TokenClasses, build_cjk_processors, build_sentence_stopping
from ..metrics import speculative_metric_paths
from ..runs import read_manifest
from ..timing import paired_seconds
from . import target, write_result

TOKEN_BYTES = 4  # an int32 token id on the wire


@dataclass
class SpeculativeBenchConfig:
    """`genlab bench speculative`: what to measure; the edge (and the tiny cloud) are trained first when missing."""

    json: str | None = field(default=None, metadata={"help": "where to write the benchmark JSON"})
    cloud: str = field(default="tiny", metadata={
        "help": "'smollm2', 'gemma3' (registry packages) or 'tiny' (an AR run trained here at --cloud-dir)"})
    cloud_dir: str = field(default="runs/speculative-cloud", metadata={"help": "the tiny cloud's run directory"})
    edge_dir: str = field(default="runs/speculative-edge-kd", metadata={"help": "edge run (distilled if missing)"})
    edge_layers: int = field(default=2, metadata={"help": "edge layers when it is distilled first"})
    draft_vocab_size: int = field(default=8192, metadata={"help": "edge draft vocabulary when distilled first"})
    edge_steps: int = field(default=400, metadata={"help": "distillation steps when the edge is distilled first"})
    edge_continuations: int = field(default=1024, metadata={
        "help": "cloud continuations in the edge's distillation text when it is distilled first"})
    prompts: int = field(default=50, metadata={"help": "held-out test prompts"})
    max_new_tokens: int = field(default=32, metadata={"help": "new tokens per prompt"})
    num_draft_tokens: int = field(default=4, metadata={"help": "k of the fixed-length modes (genlab and HF)"})
    batch_size: int = field(default=4, metadata={"help": "the small batch timed besides batch 1"})
    gate_thresholds: str = field(default="0.25,0.5,0.75,1,1.5,2,3", metadata={
        "help": "gate curve thresholds, nats per drafted token"})
    gate_prompts: int = field(default=20, metadata={"help": "validation prompts of the gate curve"})
    rtts_ms: str = field(default="20,50,100", metadata={"help": "simulated round-trip times (ms)"})
    uplink_mbps: float = field(default=1.0, metadata={"help": "simulated uplink bandwidth (Mbit/s)"})
    seed: int = field(default=0, metadata={"help": "seed of the sampled A/B"})
    threads: int = field(default=1, metadata={"help": "torch threads (1: paired timings on a shared CPU)"})

    @property
    def corpus(self) -> str:
        return CLOUDS.get(self.cloud, "all")

    def cloud_source(self) -> str:
        return self.cloud_dir if self.cloud == "tiny" else self.cloud


def held_out_prompts(n: int, corpus: str = "all", split: str = "test") -> list[str]:
    """Prompts: the first third (6 characters at least, cut at a space in English) of ``n`` sentences."""
    prompts = []
    for text in load_corpus(corpus)[split]["text"]:
        if len(text) < 18:
            continue
        head = text[: max(6, len(text) // 3)]
        prompts.append(head.rsplit(" ", 1)[0] if " " in head else head)
        if len(prompts) == n:
            break
    return prompts


def cloud_agreement(cloud, processors: LogitsProcessorList, sequences: torch.Tensor, prompt_len: int) -> tuple[int, int]:
    """(tokens equal to the cloud's processed greedy choice given the same prefix, generated tokens) of one row."""
    with torch.no_grad():
        logits = cloud(input_ids=sequences).logits[0].float()  # (seq, vocab)
    new = sequences.shape[1] - prompt_len
    choices = [processors(sequences[:, : prompt_len + j], logits[prompt_len + j - 1 : prompt_len + j]).argmax(-1)
               for j in range(new)]
    return int((torch.cat(choices) == sequences[0, prompt_len:]).sum()) if new else 0, new


class Decoder:
    """One pair, one processor stack, one stopping rule: every way of decoding a prompt the bench compares."""

    def __init__(self, cloud, edge, tokenizer, args: SpeculativeBenchConfig):
        self.cloud, self.edge, self.tokenizer, self.args = cloud, edge, tokenizer, args
        self.classes = TokenClasses.from_tokenizer(tokenizer)
        self.processors = build_cjk_processors(self.classes)

    def __call__(self, prompts: list[str], method: str, sample: bool = False, processors=None, **overrides):
        """Decode ``prompts`` with ``method``: cloud | hf_dynamic | hf_same_k | lossless_dynamic | a preset."""
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True)
        common = dict(max_new_tokens=self.args.max_new_tokens, do_sample=sample,
                      logits_processor=self.processors if processors is None else processors,
                      stopping_criteria=build_sentence_stopping(self.classes, inputs["input_ids"].shape[1]),
                      pad_token_id=self.tokenizer.pad_token_id, **({"top_k": 0, "temperature": 0.7} if sample else {}))
        k = self.args.num_draft_tokens
        with torch.no_grad():
            if method == "cloud":
                return self.cloud.generate(**inputs, **common)
            if method == "hf_dynamic":  # HF's defaults: confidence-stopped drafting
                return self.cloud.generate(**inputs, **common, assistant_model=self.edge)
            if method == "hf_same_k":
                return self.cloud.generate(**inputs, **common, assistant_model=self.edge, num_assistant_tokens=k,
                                           assistant_confidence_threshold=0.0, num_assistant_tokens_schedule="constant")
            if method == "lossless_dynamic":
                overrides = {"num_draft_tokens": 2 * k, "draft_confidence": 0.4, **overrides}
                method = "lossless"
            return self.cloud.generate(**inputs, **common, custom_generate=edge_cloud_generate, edge_model=self.edge,
                                       preset=method, token_classes=self.classes, return_stats=True,
                                       num_draft_tokens=overrides.pop("num_draft_tokens", k), **overrides)

    def prompt_length(self, prompt: str) -> int:
        return len(self.tokenizer(prompt)["input_ids"])


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _sequences(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.sequences


def edge_cost_ratio(cloud, edge, tokenizer, prompt: str, repeats: int = 30) -> float:
    """Median paired ratio of one cached decoding step: edge (as the loop runs it, trimmed head) / cloud."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    positions = torch.arange(ids.shape[1] + 1)[None]
    steps = []
    for model in (edge, cloud):
        runner = _IncrementalModel(model, cloud.get_output_embeddings().weight.shape[0])
        with torch.no_grad():
            runner.extend(ids, None, positions[:, :-1], logits_to_keep=1)
        longer = torch.cat([ids, ids[:, -1:]], 1)

        def step(runner=runner, longer=longer):
            with torch.no_grad():
                runner.extend(longer, None, positions, logits_to_keep=1)
            runner.crop(longer.shape[1] - 1)

        steps.append(step)
    return paired_seconds(steps[1], steps[0], repeats=repeats, warmup=3)[2]


def gate_curve(decode: Decoder, prompts: list[str], thresholds: list[float]) -> list[dict]:
    """Per threshold (nats/token): cloud-call rate and agreement with the cloud's choices, fluency k."""
    curve = []
    for threshold in thresholds:
        calls = blocks = agree = total = 0
        for prompt in prompts:
            out = decode([prompt], "fluency", entropy_threshold=threshold)
            calls, blocks = calls + out.cloud_calls, blocks + out.blocks
            a, n = cloud_agreement(decode.cloud, decode.processors, out.sequences, decode.prompt_length(prompt))
            agree, total = agree + a, total + n
        curve.append({"threshold": threshold, "cloud_call_rate": calls / max(blocks, 1),
                      "agreement": agree / max(total, 1)})
    return curve


def pick_threshold(curve: list[dict], min_agreement: float) -> float:
    """The largest threshold whose validation agreement reaches ``min_agreement`` (the smallest one if none)."""
    passing = [point["threshold"] for point in curve if point["agreement"] >= min_agreement]
    return max(passing) if passing else min(point["threshold"] for point in curve)


def simulated_latency(seconds: float, tokens: int, calls: int, uplink_tokens: int, rtt_ms: float,
                      uplink_mbps: float) -> float:
    """Seconds per generated token: compute + one round trip per cloud call + the uplink of the tokens sent."""
    network = calls * rtt_ms / 1000 + uplink_tokens * TOKEN_BYTES * 8 / (uplink_mbps * 1e6)
    return (seconds + network) / max(tokens, 1)


def run(args: SpeculativeBenchConfig) -> dict:
    """Measure the cloud/edge pair (the edge complete: see ``genlab.prepare``)."""
    torch.set_num_threads(args.threads)
    bench_start = time.perf_counter()
    cloud, tokenizer = load_cloud(args.cloud_source())
    edge = AutoModelForCausalLM.from_pretrained(args.edge_dir).eval()
    edge_manifest = read_manifest(args.edge_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    decode = Decoder(cloud, edge, tokenizer, args)
    prompts = held_out_prompts(args.prompts, args.corpus)
    set_seed(args.seed)

    for prompt in prompts[:3]:  # warm-up
        for method in ("cloud", "hf_dynamic", "lossless"):
            decode([prompt], method)
    thresholds = [float(t) for t in args.gate_thresholds.split(",") if t]
    curve = gate_curve(decode, held_out_prompts(args.gate_prompts, args.corpus, "validation"), thresholds)
    chosen = {"fluency": pick_threshold(curve, 0.95), "quality": pick_threshold(curve, 0.98)}

    methods = ("cloud", "lossless", "lossless_dynamic", "hf_dynamic", "hf_same_k", "edge", "fluency", "quality")
    seconds = dict.fromkeys(methods, 0.0)
    tokens = dict.fromkeys(methods, 0)
    stats = {m: dict(accepted=0, verified=0, cloud_calls=0, blocks=0, agree=0, uplink=0)
             for m in ("lossless", "lossless_dynamic", "fluency", "quality", "edge")}
    equal = {"lossless": 0, "lossless_dynamic": 0, "hf_dynamic": 0}
    for prompt in prompts:
        prompt_len = decode.prompt_length(prompt)
        outputs = {}
        for method in methods:
            threshold = {"entropy_threshold": chosen[method]} if method in chosen else {}
            outputs[method], elapsed = _timed(lambda: decode([prompt], method, **threshold))
            seconds[method] += elapsed
            tokens[method] += _sequences(outputs[method]).shape[1] - prompt_len
        reference = outputs["cloud"]
        for method in equal:
            equal[method] += torch.equal(_sequences(outputs[method]), reference)
        for method, record in stats.items():
            out = outputs[method]
            for name in ("accepted", "verified", "cloud_calls", "blocks"):
                record[name] += getattr(out, name)
            record["uplink"] += prompt_len + out.verified  # the prompt once, then each verified draft
            if method in ("fluency", "quality", "edge"):
                record["agree"] += cloud_agreement(cloud, decode.processors, out.sequences, prompt_len)[0]

    batch = batch_speed(decode, prompts, args.batch_size)
    cost = edge_cost_ratio(cloud, edge, tokenizer, prompts[0])
    figures = {
        "lossless_equals_cloud": equal["lossless"] / len(prompts),
        "lossless_dynamic_equals_cloud": equal["lossless_dynamic"] / len(prompts),
        "hf_assisted_equals_cloud": equal["hf_dynamic"] / len(prompts),
        "acceptance_rate": stats["lossless"]["accepted"] / max(stats["lossless"]["verified"], 1),
        "tokens_per_block": tokens["lossless"] / max(stats["lossless"]["blocks"], 1),
        "dynamic_acceptance_rate": stats["lossless_dynamic"]["accepted"] / max(stats["lossless_dynamic"]["verified"], 1),
        "edge_cost_ratio": cost,
        "cloud_tok_s_b1": tokens["cloud"] / seconds["cloud"],
        "lossless_speedup_vs_cloud": seconds["cloud"] / seconds["lossless"],
        "lossless_dynamic_speedup_vs_cloud": seconds["cloud"] / seconds["lossless_dynamic"],
        "hf_assisted_speedup_vs_cloud": seconds["cloud"] / seconds["hf_dynamic"],
        "hf_same_k_speedup_vs_cloud": seconds["cloud"] / seconds["hf_same_k"],
        "speedup_vs_hf_assisted": min(seconds["hf_dynamic"], seconds["hf_same_k"]) / seconds["lossless"],
        "edge_only_speedup_vs_cloud": (tokens["edge"] / seconds["edge"]) / (tokens["cloud"] / seconds["cloud"]),
        **batch,
        "gated_cloud_call_rate": stats["fluency"]["cloud_calls"] / max(stats["fluency"]["blocks"], 1),
        "gated_agreement": stats["fluency"]["agree"] / max(tokens["fluency"], 1),
        "quality_cloud_call_rate": stats["quality"]["cloud_calls"] / max(stats["quality"]["blocks"], 1),
        "quality_agreement": stats["quality"]["agree"] / max(tokens["quality"], 1),
        "edge_only_agreement": stats["edge"]["agree"] / max(tokens["edge"], 1),
        "generated_tokens": tokens["cloud"],
        "fluency_threshold": chosen["fluency"],
        "quality_threshold": chosen["quality"],
    }
    figures.update(latency_figures(args, seconds, tokens, stats))
    if args.corpus != "pydocs":
        figures.update(ab_test(prompts, decode, chosen["fluency"]))
    return write_result(args.json, "speculative", config=bench_config(args, edge_manifest, thresholds),
                        budget={"bench_s": round(time.perf_counter() - bench_start, 1),
                                "edge_steps": edge_manifest.get("steps")},
                        figures=figures, targets=targets_of(figures, args), extra={"gate_curve": curve})


def batch_speed(decode: Decoder, prompts: list[str], batch_size: int) -> dict:
    """Lossless vs cloud-only at ``batch_size`` left-padded rows: speed ratio and output equality."""
    seconds, equal, rows = {"cloud": 0.0, "lossless": 0.0}, 0, 0
    for start in range(0, len(prompts) - batch_size + 1, batch_size):
        group = prompts[start : start + batch_size]
        reference, elapsed = _timed(lambda: decode(group, "cloud"))
        seconds["cloud"] += elapsed
        lossless, elapsed = _timed(lambda: decode(group, "lossless"))
        seconds["lossless"] += elapsed
        width = min(reference.shape[1], lossless.sequences.shape[1])
        equal += int((reference[:, :width] == lossless.sequences[:, :width]).all(1).sum())
        rows += len(group)
    return {f"lossless_speedup_vs_cloud_b{batch_size}": seconds["cloud"] / max(seconds["lossless"], 1e-9),
            f"lossless_equals_cloud_b{batch_size}": equal / max(rows, 1)}


def latency_figures(args: SpeculativeBenchConfig, seconds: dict, tokens: dict, stats: dict) -> dict:
    """Per-token latency under each simulated RTT, and each mode's ratio to cloud-only."""
    figures = {}
    for rtt in (float(r) for r in args.rtts_ms.split(",") if r):
        cloud = simulated_latency(seconds["cloud"], tokens["cloud"], tokens["cloud"], tokens["cloud"], rtt,
                                  args.uplink_mbps)
        name = f"{rtt:g}ms"
        figures[f"cloud_latency_ms_{name}"] = 1000 * cloud
        for mode, label in (("lossless", "lossless"), ("fluency", "gated"), ("edge", "edge_only")):
            record = stats[mode]
            latency = simulated_latency(seconds[mode], tokens[mode], record["cloud_calls"], record["uplink"], rtt,
                                        args.uplink_mbps)
            figures[f"{label}_latency_ratio_{name}"] = latency / cloud
    return figures


def bench_config(args: SpeculativeBenchConfig, edge_manifest: dict, thresholds: list[float]) -> dict:
    return {**{k: v for k, v in dataclasses.asdict(args).items() if k != "json"},
            "corpus": args.corpus, "decoding": "greedy (speed, agreement); sampling T 0.7 (A/B)",
            "processors": "build_cjk_processors defaults, the same stack for every decoder",
            "stopping": "one sentence, min_new_tokens 16", "edge_run": edge_manifest,
            "hf_assisted": "assistant_model=edge: HF scores the edge's full (tied) head; genlab its trimmed rows",
            "entropy_unit": "nats per drafted token (mean over the block)", "gate_thresholds": thresholds,
            "network": f"RTT per cloud call + {TOKEN_BYTES} B/token uplink at {args.uplink_mbps} Mbit/s; "
                       "cloud-only = one call per token"}


def targets_of(figures: dict, args: SpeculativeBenchConfig) -> dict:
    targets = {
        "lossless_equals_cloud": target(figures["lossless_equals_cloud"], "≥", 1.0),
        "acceptance_rate": target(figures["acceptance_rate"], "≥", 0.8),
        "lossless_speedup_vs_cloud": target(figures["lossless_speedup_vs_cloud"], "≥", 2.0),
        "speedup_vs_hf_assisted": target(figures["speedup_vs_hf_assisted"], "≥", 1.3),
        "gated_cloud_call_rate": target(figures["gated_cloud_call_rate"], "≤", 0.25),
        "gated_agreement": target(figures["gated_agreement"], "≥", 0.95),
    }
    if "gated_latency_ratio_50ms" in figures:
        targets["gated_latency_ratio_50ms"] = target(figures["gated_latency_ratio_50ms"], "≤", 0.5)
    if "punct_density" in figures:
        targets["punct_density"] = {"goal": "10–25 %", "met": bool(0.10 <= figures["punct_density"] <= 0.25)}
        targets["repeat_rate_3"] = target(figures["repeat_rate_3"], "≤", 0.02)
        targets["adjacent_identical_rate"] = target(figures["adjacent_identical_rate"], "≤", 0.005)
    return targets


def ab_test(prompts: list[str], decode: Decoder, threshold: float) -> dict:
    """S6 / seed 004's A/B: sampled fluency-preset outputs with the CJK processors on vs off (T 0.7 in both)."""
    metrics = {name: evaluate.load(path) for name, path in speculative_metric_paths().items()}
    figures = {}
    for arm, suffix in ((None, ""), (LogitsProcessorList(), "_off")):  # temperature comes from generate in both
        texts = []
        for prompt in prompts:
            out = decode([prompt], "fluency", sample=True, processors=arm, entropy_threshold=threshold)
            texts.append(decode.tokenizer.decode(out.sequences[0, decode.prompt_length(prompt):],
                                                 skip_special_tokens=True))
        figures[f"punct_density{suffix}"] = metrics["punctuation_density"].compute(predictions=texts)["punct_density"]
        repetition = metrics["cjk_repetition"].compute(predictions=texts)
        figures.update({f"{name}{suffix}": value for name, value in repetition.items()})
    return figures
