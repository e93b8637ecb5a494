"""`genlab bench speculative`: edge/cloud decoding vs cloud-only and HF assisted generation (SPEC S1–S6, B).

A cloud (``--cloud-preset``, default ``tiny``: the ``base`` preset trains at < 0.2 step/s on the shared 2-core
CPU, too slow for the ~20 min budget) and an edge (``nano``, ≈ 10× fewer non-embedding FLOPs) distilled from it
(KL to the cloud + next-token CE) are trained on the corpus when their run directories are incomplete. On 50
held-out prompts (first characters of test-split sentences), at batch 1, greedy, with the CJK processor stack
and one-sentence stopping everywhere:

- speed: tokens/s of lossless edge/cloud, cloud-only ``generate`` and HF ``assistant_model`` assisted generation
  on the same pair and processors, timed interleaved per prompt (the machine is shared) after a warm-up;
  figures are ratios of pooled tokens/s;
- acceptance rate of the lossless mode and equality of its output with cloud-only;
- gated presets: cloud-call rate, acceptance rate, and agreement with the cloud — ``gated_agreement`` is the
  share of generated tokens equal to the cloud's own (processed, greedy) choice given the same prefix,
  ``gated_sequence_match`` the share of positions equal to the cloud-only output;
- the seed's A/B (sampling, temperature 0.7, fluency preset): punctuation density, CJK 2/3-gram repeat rates and
  adjacent-identical rate with the processors on vs off — computed with the evaluate modules of ``metrics/``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import evaluate
import torch
from transformers import AutoModelForCausalLM, LogitsProcessorList, set_seed

from ..data import load_corpus
from ..generation_speculative import edge_cloud_generate
from ..logits_process import TokenClasses, build_cjk_processors, build_sentence_stopping
from ..metrics import speculative_metric_paths
from ..runs import read_manifest
from ..tokenization import load_tokenizer
from . import target, write_result


@dataclass
class SpeculativeBenchConfig:
    """`genlab bench speculative`: what to measure; the cloud and the edge are trained first when incomplete."""

    json: str | None = field(default=None, metadata={"help": "where to write the benchmark JSON"})
    cloud_dir: str = field(default="runs/speculative-cloud", metadata={"help": "cloud AR run (trained if incomplete)"})
    edge_dir: str = field(default="runs/speculative-edge-kd", metadata={"help": "edge run (distilled if incomplete)"})
    cloud_preset: str = field(default="tiny", metadata={"help": "cloud size when it is trained first"})
    edge_preset: str = field(default="nano", metadata={"help": "edge size when it is distilled first"})
    cloud_budget: float = field(default=600.0, metadata={"help": "cloud training seconds when trained first"})
    edge_budget: float = field(default=300.0, metadata={"help": "edge distillation seconds when distilled first"})
    prompts: int = field(default=50, metadata={"help": "held-out prompts"})
    prompt_chars: int = field(default=6, metadata={"help": "characters per prompt"})
    max_new_tokens: int = field(default=32, metadata={"help": "new tokens per prompt"})
    seed: int = field(default=0, metadata={"help": "seed of sampling (and of the edge when distilled first)"})
    sweep_k: str = field(default="1,2", metadata={"help": "extra draft lengths timed in lossless mode (comma list)"})
    threads: int = field(default=1, metadata={
        "help": "torch threads (1: on the shared 2-core CPU, 2 threads ran ~5× slower under contention)"})


def held_out_prompts(n: int, chars: int) -> list[str]:
    """The first ``chars`` characters of the first ``n`` test-split sentences long enough to continue."""
    test = load_corpus("all")["test"]
    return [text[:chars] for text in test["text"] if len(text) >= 3 * chars][:n]


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cloud_agreement(cloud, processors: LogitsProcessorList, sequences: torch.Tensor, prompt_len: int) -> tuple[int, int]:
    """(tokens equal to the cloud's processed greedy choice given the same prefix, generated tokens) of one row."""
    with torch.no_grad():
        logits = cloud(input_ids=sequences).logits[0].float()  # (seq, vocab)
    new = sequences.shape[1] - prompt_len
    choices = [processors(sequences[:, : prompt_len + j], logits[prompt_len + j - 1 : prompt_len + j]).argmax(-1)
               for j in range(new)]
    return int((torch.cat(choices) == sequences[0, prompt_len:]).sum()) if new else 0, new


def run(args: SpeculativeBenchConfig) -> dict:
    """Measure the cloud/edge pair (both complete: see ``genlab.prepare``)."""
    torch.set_num_threads(args.threads)
    bench_start = time.perf_counter()
    cloud_manifest, edge_manifest = read_manifest(args.cloud_dir), read_manifest(args.edge_dir)
    cloud = AutoModelForCausalLM.from_pretrained(args.cloud_dir).eval()
    edge = AutoModelForCausalLM.from_pretrained(args.edge_dir).eval()
    tokenizer = load_tokenizer(args.cloud_dir)
    classes = TokenClasses.from_tokenizer(tokenizer)
    processors = build_cjk_processors(classes)
    prompts = held_out_prompts(args.prompts, args.prompt_chars)
    metrics = {name: evaluate.load(path) for name, path in speculative_metric_paths().items()}
    set_seed(args.seed)

    def decode(prompt: str, method: str, sample: bool = False, procs: LogitsProcessorList = processors,
               k: int | None = None):
        inputs = tokenizer(prompt, return_tensors="pt")
        stopping = build_sentence_stopping(classes, inputs["input_ids"].shape[1])
        common = dict(max_new_tokens=args.max_new_tokens, do_sample=sample, logits_processor=procs,
                      stopping_criteria=stopping, **({"top_k": 0, "temperature": 0.7} if sample else {}))
        with torch.no_grad():
            if method == "cloud":
                return cloud.generate(**inputs, **common)
            if method == "hf_assisted":
                return cloud.generate(**inputs, **common, assistant_model=edge)
            return cloud.generate(**inputs, **common, custom_generate=edge_cloud_generate, edge_model=edge,
                                  preset=method, num_draft_tokens=k, token_classes=classes, return_stats=True)

    for prompt in prompts[:3]:  # warm-up
        for method in ("cloud", "hf_assisted", "lossless"):
            decode(prompt, method)

    sweep = [int(k) for k in args.sweep_k.split(",") if k]
    seconds = {m: 0.0 for m in ("cloud", "hf_assisted", "lossless", *(f"lossless_k{k}" for k in sweep))}
    tokens, equal_lossless, equal_hf = 0, 0, 0
    stats = {p: {"accepted": [], "verified": [], "cloud_calls": [], "blocks": [], "agree": [0, 0], "match": [0, 0]}
             for p in ("lossless", "fluency", "quality")}
    for prompt in prompts:
        prompt_len = len(tokenizer(prompt)["input_ids"])
        reference, seconds_cloud = _timed(lambda: decode(prompt, "cloud"))
        assisted, seconds_hf = _timed(lambda: decode(prompt, "hf_assisted"))
        lossless, seconds_lossless = _timed(lambda: decode(prompt, "lossless"))
        seconds["cloud"] += seconds_cloud
        seconds["hf_assisted"] += seconds_hf
        seconds["lossless"] += seconds_lossless
        for k in sweep:
            seconds[f"lossless_k{k}"] += _timed(lambda: decode(prompt, "lossless", k=k))[1]
        tokens += reference.shape[1] - prompt_len
        equal_lossless += torch.equal(lossless.sequences, reference)
        equal_hf += torch.equal(assisted, reference)
        for preset in ("lossless", "fluency", "quality"):
            out = lossless if preset == "lossless" else decode(prompt, preset)
            record = stats[preset]
            for name in ("accepted", "verified", "cloud_calls", "blocks"):
                record[name].append(getattr(out, name))
            agree, new = cloud_agreement(cloud, processors, out.sequences, prompt_len)
            record["agree"][0] += agree
            record["agree"][1] += new
            length = min(out.sequences.shape[1], reference.shape[1]) - prompt_len
            record["match"][0] += int((out.sequences[0, prompt_len:prompt_len + length]
                                       == reference[0, prompt_len:prompt_len + length]).sum())
            record["match"][1] += reference.shape[1] - prompt_len

    def rate(name: str, preset: str) -> float:
        record = stats[preset]
        if name == "acceptance_rate":
            return metrics[name].compute(accepted=record["accepted"], verified=record["verified"])[name]
        return metrics[name].compute(cloud_calls=record["cloud_calls"], blocks=record["blocks"])[name]

    ab = ab_test(prompts, decode, tokenizer, metrics)
    figures = {
        "lossless_speedup_vs_cloud": seconds["cloud"] / seconds["lossless"],
        "speedup_vs_hf_assisted": seconds["hf_assisted"] / seconds["lossless"],
        "hf_assisted_speedup_vs_cloud": seconds["cloud"] / seconds["hf_assisted"],
        **{f"lossless_speedup_vs_cloud_k{k}": seconds["cloud"] / seconds[f"lossless_k{k}"] for k in sweep},
        "lossless_equals_cloud": equal_lossless / len(prompts),
        "hf_assisted_equals_cloud": equal_hf / len(prompts),
        "acceptance_rate": rate("acceptance_rate", "lossless"),
        "gated_cloud_call_rate": rate("cloud_call_rate", "fluency"),
        "gated_acceptance_rate": rate("acceptance_rate", "fluency"),
        "gated_agreement": stats["fluency"]["agree"][0] / max(stats["fluency"]["agree"][1], 1),
        "gated_sequence_match": stats["fluency"]["match"][0] / max(stats["fluency"]["match"][1], 1),
        "quality_cloud_call_rate": rate("cloud_call_rate", "quality"),
        "quality_agreement": stats["quality"]["agree"][0] / max(stats["quality"]["agree"][1], 1),
        "cloud_tok_s_b1": tokens / seconds["cloud"],
        "generated_tokens": tokens,
        **ab,
    }
    targets = {
        "lossless_speedup_vs_cloud": target(figures["lossless_speedup_vs_cloud"], "≥", 2.5),
        "speedup_vs_hf_assisted": target(figures["speedup_vs_hf_assisted"], "≥", 1.2),
        "acceptance_rate": target(figures["acceptance_rate"], ">", 0.6),
        "gated_cloud_call_rate": target(figures["gated_cloud_call_rate"], "≤", 0.25),
        "gated_agreement": target(figures["gated_agreement"], "≥", 0.95),
        "lossless_equals_cloud": target(figures["lossless_equals_cloud"], "≥", 1.0),
        "punct_density": {"goal": "10–25 %", "met": bool(0.10 <= figures["punct_density"] <= 0.25)},
    }
    config = {**{k: v for k, v in dataclasses.asdict(args).items() if k != "json"},
              "batch_size": 1, "decoding": "greedy (speed, agreement); sampling T=0.7 (A/B)",
              "processors": "build_cjk_processors defaults (penalty 1.22, 3-gram ban, comma gate 4/8); T 0.7 from generate",
              "stopping": "one sentence, min_new_tokens 16", "cloud_run": cloud_manifest, "edge_run": edge_manifest,
              "entropy_unit": "nats, summed over the k drafted tokens of a block"}
    budget = {"bench_s": round(time.perf_counter() - bench_start, 1),
              "cloud_steps": cloud_manifest.get("steps"), "edge_steps": edge_manifest.get("steps")}
    return write_result(args.json, "speculative", config=config, budget=budget, figures=figures, targets=targets)


def ab_test(prompts: list[str], decode, tokenizer, metrics: dict) -> dict:
    """Seed 004's A/B: sampled fluency-preset outputs with the CJK processors on vs off (temperature 0.7 in both)."""
    off = LogitsProcessorList()  # temperature 0.7 comes from generate in both arms
    figures = {}
    for arm, suffix in ((None, ""), (off, "_off")):
        texts = []
        for prompt in prompts:
            out = decode(prompt, "fluency", sample=True, **({} if arm is None else {"procs": arm}))
            prompt_len = len(tokenizer(prompt)["input_ids"])
            texts.append(tokenizer.decode(out.sequences[0, prompt_len:], skip_special_tokens=True))
        figures[f"punct_density{suffix}"] = metrics["punctuation_density"].compute(predictions=texts)["punct_density"]
        repetition = metrics["cjk_repetition"].compute(predictions=texts)
        figures.update({f"{name}{suffix}": value for name, value in repetition.items()})
    return figures
