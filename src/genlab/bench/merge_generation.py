"""MERGE as a generator against the same-size AR (SPEC M10; issue 12): gen mode's speed at batch 1 and 32, the
judge's perplexity of both sides' samples, distinct-2, and the rounds gen mode used (``genlab bench merge``)."""

from __future__ import annotations

import math

import torch

from ..timing import median_seconds
from .ar import NEW_TOKENS, generate_tok_s


def bos_batch(batch: int, bos: int) -> torch.Tensor:
    return torch.full((batch, 1), bos, dtype=torch.long)


def merge_tok_s(model, batch: int, repeats: int, rounds: int) -> tuple[float, torch.Tensor]:
    """Gen-mode tokens/s for 64-token outputs from ``<s>``, and the rounds each row used."""
    ids = bos_batch(batch, model.config.bos_token_id)
    kwargs = dict(mode="gen", max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, max_rounds=rounds)
    seconds = median_seconds(lambda: model.generate(ids, **kwargs), repeats=repeats)
    return batch * NEW_TOKENS / seconds, model.generate(ids, return_dict_in_generate=True, **kwargs).rounds


def prompts(tokenizer, sentences: list[str]) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = "left"
    return tokenizer([s[:2] for s in sentences], return_tensors="pt", padding=True)


def merge_samples(model, tokenizer, sentences, rounds: int) -> list[str]:
    batch = prompts(tokenizer, sentences)
    out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], mode="gen",
                         max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, max_rounds=rounds)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def ar_samples(model, tokenizer, sentences) -> list[str]:
    batch = prompts(tokenizer, sentences)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


@torch.no_grad()
def judge_perplexity(judge, tokenizer, texts: list[str]) -> float:
    """exp(mean token NLL) of each text (after the judge tokenizer's own start token) under the judge, over
    all texts' tokens."""
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    logits = judge(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], reduction="sum",
                                            ignore_index=-100)
    return math.exp(float(nll) / int((labels[:, 1:] != -100).sum()))


def distinct2(texts: list[str]) -> float:
    """Distinct character bigrams / all character bigrams, over all texts."""
    bigrams = [text[i:i + 2] for text in texts for i in range(len(text) - 1)]
    return len(set(bigrams)) / max(1, len(bigrams))


def generation_figures(merge, ar, tokenizer, judge, judge_tokenizer, sentences: list[str], gen_rounds: int,
                       repeats: int) -> dict:
    """MERGE gen mode (``gen_rounds`` Mask-Predict iterations) vs the AR: speed at batch 1 and 32 (median of
    ``repeats``), judge perplexity and distinct-2 of their continuations of ``sentences``' first two characters,
    rounds."""
    bos = bos_batch(1, tokenizer.bos_token_id)
    ar_b1, ar_b32 = generate_tok_s(ar, bos, repeats), generate_tok_s(ar, bos.repeat(32, 1), repeats)
    merge_b1, _ = merge_tok_s(merge, 1, repeats, gen_rounds)
    merge_b32, rounds = merge_tok_s(merge, 32, repeats, gen_rounds)
    merge_texts, ar_texts = merge_samples(merge, tokenizer, sentences, gen_rounds), ar_samples(ar, tokenizer,
                                                                                                  sentences)
    merge_ppl = judge_perplexity(judge, judge_tokenizer, merge_texts)
    ar_ppl = judge_perplexity(judge, judge_tokenizer, ar_texts)
    merge_d2, ar_d2 = distinct2(merge_texts), distinct2(ar_texts)
    figures = {"speedup_b1": merge_b1 / ar_b1, "speedup_b32": merge_b32 / ar_b32, "mean_rounds": float(
        rounds.float().mean()), "gen_ppl_ratio": merge_ppl / ar_ppl, "distinct2_ratio": merge_d2 / max(ar_d2, 1e-9),
        "merge_tok_s_b1": merge_b1, "merge_tok_s_b32": merge_b32, "ar_tok_s_b1": ar_b1, "ar_tok_s_b32": ar_b32,
        "merge_gen_ppl": merge_ppl, "ar_gen_ppl": ar_ppl, "merge_distinct2": merge_d2, "ar_distinct2": ar_d2}
    for r in range(1, gen_rounds + 1):
        figures[f"gen_rounds_frac_{r}"] = float((rounds == r).float().mean())
    return figures
