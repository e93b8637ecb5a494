"""The examples the demo shows beside its figures: MERGE round traces, concept boundaries, plans and their
texts, edge/cloud outputs side by side. Nothing here is a benchmark figure."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import LogitsProcessorList

from ..configuration_planner import NUM_CONCEPT_SPECIALS
from ..generation_speculative import edge_cloud_generate
from ..logits_process import TokenClasses, build_cjk_processors, build_sentence_stopping
from ..modeling_planner import PlannerExecutorModel, concept_slot_mask
from ..runs import read_manifest
from ..tokenization import load_tokenizer
from ..trainers.planner_data import collate, run_pairs
from ..trainers.planner_monitors import corrupt_concepts


def decode(tokenizer, ids: torch.Tensor) -> list[str]:
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def merge_trace(model, tokenizer, batch: dict, **kwargs) -> list[dict]:
    """Per row: the text after each round and the round's gate, inserted count and mean confidence (M8 trace),
    from one ``generate`` call (its ``round_sequences``)."""
    out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], return_dict_in_generate=True,
                         **kwargs)
    rows = [{"rounds": int(r), "steps": []} for r in out.rounds]
    for r, sequences in enumerate(out.round_sequences, start=1):
        texts = decode(tokenizer, sequences)
        for i, row in enumerate(rows):
            if r <= row["rounds"]:
                row["steps"].append({"round": r, "text": texts[i], "gate": float(out.gate[i, r - 1]),
                                     "inserted": float(out.inserted[i, r - 1]),
                                     "confidence": float(out.confidence[i, r - 1])})
    return rows


def concept_boundaries(model, tokenizer, texts: list[str]) -> list[str]:
    """Each text with ``|`` after every token where the ConceptHead fired (noise-free decisions)."""
    shown = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            fired = model(input_ids=ids).is_concept[0].tolist()
        tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
        shown.append("".join(t + ("|" if f else "") for t, f in zip(tokens[1:], fired[1:])))  # after <s>
    return shown


def render_plan(plan: torch.Tensor, config, text_ids: list[int], tokenizer) -> str:
    """One plan (types, L) as text: a text concept shows its token; a hashed keyword concept the character of
    the text it hashes from (else ``#id``: the executor did not write it); a shape concept its clause length."""
    keep = concept_slot_mask(plan[None])[0]
    parts = []
    for name, vocab, row, valid in zip(config.concept_types, config.concept_vocab_sizes, plan.tolist(), keep.tolist()):
        ids = [c - NUM_CONCEPT_SPECIALS for c, v in zip(row, valid) if v]
        if name in config.text_concept_types:
            parts.append(f"{name}: " + " ".join(tokenizer.convert_ids_to_tokens(ids)))
        elif name == "keywords":
            chars = {i % vocab: tokenizer.convert_ids_to_tokens(i) for i in text_ids if i >= NUM_CONCEPT_SPECIALS}
            parts.append(f"{name}: " + " ".join(chars.get(i, f"#{i}") for i in ids))
        else:
            parts.append(f"{name}: " + " ".join(f"{4 * i}-{4 * i + 3}" for i in ids))
    return "; ".join(parts)


@torch.no_grad()
def planner_examples(run_dir: Path, shown: int, plan_options: dict | None = None) -> list[dict]:
    """Held-out u → the planner's concepts → the executor's text, and the text written from the next row's plan.
    ``plan_options``: keyword arguments of ``model.plan`` (the bench's decoding of the plan)."""
    model = PlannerExecutorModel.from_pretrained(run_dir).eval()
    tokenizer, config = load_tokenizer(run_dir), model.config
    pairs = run_pairs(read_manifest(run_dir), "validation", tokenizer, config)
    pairs = pairs.shuffle(seed=0).select(range(max(2, shown)))
    batch = collate([pairs[i] for i in range(len(pairs))])
    plans = model.plan(batch["input_ids"], batch["attention_mask"], **(plan_options or {}))
    texts = model.execute(plans, max_new_tokens=48)
    shuffled = corrupt_concepts(plans, "shuffle", config.concept_vocab_sizes)
    return [{"u": u, "y": y, "concepts": render_plan(p, config, t, tokenizer),
             "text": text, "shuffled_text": bad}
            for u, y, p, t, text, bad in zip(decode(tokenizer, batch["input_ids"]), decode(tokenizer, batch["text_ids"]),
                                             plans, texts.tolist(), decode(tokenizer, texts),
                                             decode(tokenizer, model.execute(shuffled, max_new_tokens=48)))]


@torch.no_grad()
def side_by_side(cloud, edge, cloud_dir: Path, prompts: list[str]) -> dict:
    """Cloud-only, lossless and gated (fluency) decoding of the same prompts, with and without the CJK processors:
    speed-up over cloud-only (pooled seconds, interleaved per prompt, after one warm-up), acceptance, cloud calls."""
    tokenizer = load_tokenizer(cloud_dir)
    classes = TokenClasses.from_tokenizer(tokenizer)
    arms = {"with CJK processors": build_cjk_processors(classes), "without processors": LogitsProcessorList()}

    def run(prompt: str, method: str, processors):
        inputs = tokenizer(prompt, return_tensors="pt")
        common = dict(max_new_tokens=32, do_sample=False, logits_processor=processors,
                      stopping_criteria=build_sentence_stopping(classes, inputs["input_ids"].shape[1]))
        if method == "cloud-only":
            return cloud.generate(**inputs, **common), inputs["input_ids"].shape[1]
        return cloud.generate(**inputs, **common, custom_generate=edge_cloud_generate, edge_model=edge,
                              preset=method, token_classes=classes, return_stats=True), inputs["input_ids"].shape[1]

    rows, texts = [], []
    for arm, processors in arms.items():
        methods = ("cloud-only", "lossless", "fluency")
        for method in methods:
            run(prompts[0], method, processors)  # warm-up
        seconds, counts, outputs = dict.fromkeys(methods, 0.0), {m: [0, 0, 0, 0] for m in methods[1:]}, []
        for prompt in prompts:
            row = {"arm": arm, "prompt": prompt}
            for method in methods:
                started = time.perf_counter()
                out, prompt_len = run(prompt, method, processors)
                seconds[method] += time.perf_counter() - started
                sequences = out if method == "cloud-only" else out.sequences
                row[method] = tokenizer.decode(sequences[0, prompt_len:], skip_special_tokens=True)
                if method != "cloud-only":
                    for i, name in enumerate(("accepted", "verified", "cloud_calls", "blocks")):
                        counts[method][i] += getattr(out, name)
            outputs.append(row)
        texts += outputs
        for method in methods[1:]:
            accepted, verified, calls, blocks = counts[method]
            rows.append({"arm": arm, "method": method, "speedup_vs_cloud": seconds["cloud-only"] / seconds[method],
                         "acceptance_rate": accepted / max(verified, 1), "cloud_call_rate": calls / max(blocks, 1),
                         "same_text_as_cloud": sum(o[method] == o["cloud-only"] for o in outputs) / len(outputs)})
    return {"rates": rows, "texts": texts}
