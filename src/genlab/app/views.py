"""What `genlab app` shows for each system, as HTML: MERGE's round-by-round trace, where concepts fire, a plan
and the text written from it, and edge/cloud decoding with every token coloured by who wrote it. Plain
functions of (model, tokenizer, text): the Gradio layout lives in ``genlab.app``."""

from __future__ import annotations

import difflib
import html
import time
from threading import Thread

import torch
from transformers import TextIteratorStreamer

from ..demo.showcase import merge_trace, render_plan
from ..generation_speculative import ACCEPTED, CLOUD, UNVERIFIED, edge_cloud_generate
from ..logits_process import TokenClasses, build_cjk_processors, build_sentence_stopping

# token_sources code → (CSS class, legend)
SOURCE_STYLE = {ACCEPTED: ("accepted", "edge draft accepted by the cloud"),
                UNVERIFIED: ("unverified", "edge draft kept without a cloud call"),
                CLOUD: ("cloud", "cloud token")}
CSS = """
.genlab-out { font-size: 1.1rem; line-height: 1.9; }
.genlab-out ol { padding-left: 1.5rem; }
.genlab-out ins { background: #d1f5d3; text-decoration: none; }
.genlab-out del { background: #ffd7d5; }
.genlab-out mark.concept { background: #ffe58f; border-bottom: 2px solid #d48806; }
.genlab-out .accepted { background: #d1f5d3; }
.genlab-out .unverified { background: #e6f0ff; }
.genlab-out .cloud { background: #ffe7ba; }
.genlab-out .rejected { color: #cf222e; text-decoration: line-through; font-size: .8em; }
.genlab-out .meta { color: #57606a; font-size: .9rem; }
"""


def _e(text: str) -> str:
    return html.escape(text, quote=False)


def diff_html(before: str, after: str) -> str:
    """``after`` with the characters a round inserted in <ins> and those it removed in <del>."""
    parts = []
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(a=before, b=after, autojunk=False).get_opcodes():
        if op in ("delete", "replace"):
            parts.append(f"<del>{_e(before[a0:a1])}</del>")
        if op in ("insert", "replace"):
            parts.append(f"<ins>{_e(after[b0:b1])}</ins>")
        if op == "equal":
            parts.append(_e(after[b0:b1]))
    return "".join(parts)


@torch.no_grad()
def merge_view(model, tokenizer, fill: dict, text: str, mode: str = "edit", max_rounds: int | None = None) -> str:
    """MERGE on one text: each round nested under the input, its edits marked, with the Gate's choice, the
    masks inserted and the fill confidence (M8); ``fill``: a fill rule's ``generate`` keywords
    (``genlab.spelling.fill_rule``); ``max_rounds``: by default the model's ``generation_config``'s."""
    tokenizer.padding_side = "right"
    batch = tokenizer([text], return_tensors="pt", padding=True)
    max_rounds = max_rounds or model.generation_config.max_rounds
    row = merge_trace(model, tokenizer, batch, mode=mode, max_rounds=max_rounds, **fill)[0]
    items, previous = [], text
    for step in row["steps"]:
        gate = "edit" if step["gate"] >= 0.5 else "generate"
        items.append(f"<li><span class='meta'>round {step['round']}: gate {gate} ({step['gate']:.2f}), "
                     f"{step['inserted']:.0f} masks inserted, confidence {step['confidence']:.2f}</span><br>"
                     f"<span class='merge-round'>{diff_html(previous, step['text'])}</span></li>")
        previous = step["text"]
    final = row["steps"][-1]["text"] if row["steps"] else text
    rule = ("word-list + confusion-set" if "fill_processor" in fill else "confusion-set" if "fill_candidates" in fill
            else "free")
    settings = f"deletion threshold {model.config.delete_threshold:g}, {rule} fill"
    return (f"<div class='genlab-out' id='merge-trace'><div class='meta'>input ({settings})</div>{_e(text)}"
            f"<ol>{''.join(items)}</ol><div class='meta'>output after {row['rounds']} round(s)</div>"
            f"<b id='merge-final'>{_e(final)}</b></div>")


@torch.no_grad()
def concept_view(model, tokenizer, text: str) -> str:
    """The text with every token where the ConceptHead fires highlighted (noise-free decisions), and the rate."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    fired = model(input_ids=ids).is_concept[0].tolist()
    tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
    shown = "".join(f"<mark class='concept'>{_e(t)}</mark>" if f else _e(t) for t, f in zip(tokens[1:], fired[1:]))
    rate = sum(fired[1:]) / max(len(fired) - 1, 1)
    return (f"<div class='genlab-out' id='concept-text'>{shown}<div class='meta'>{sum(fired[1:])} concepts over "
            f"{len(fired) - 1} tokens: {rate:.3f} per token (target {model.config.target_compression_ratio:g})"
            f"</div></div>")


@torch.no_grad()
def planner_view(model, tokenizer, plan_options: dict, u: str, max_new_tokens: int = 48) -> str:
    """u → the planner's concepts (``model.plan(**plan_options)``) → the executor's text (P1–P3)."""
    batch = tokenizer([u], add_special_tokens=False, return_tensors="pt")
    plans = model.plan(batch["input_ids"], batch["attention_mask"], **plan_options)
    texts = model.execute(plans, max_new_tokens=max_new_tokens)
    plan = render_plan(plans[0], model.config, batch["input_ids"][0].tolist(), tokenizer)
    text = tokenizer.decode(texts[0], skip_special_tokens=True)
    return (f"<div class='genlab-out'><div class='meta'>plan</div><div id='planner-plan'>{_e(plan)}</div>"
            f"<div class='meta'>text written from the plan alone</div><b id='planner-text'>{_e(text)}</b></div>")


def sources_html(tokenizer, new_ids: list[int], sources: list[int], rejected: list[int]) -> str:
    """Each new token coloured by who wrote it; a draft the cloud rejected shown struck through before it."""
    parts = []
    for token, source, draft in zip(new_ids, sources, rejected):
        if source < 0:
            continue
        if draft >= 0:
            parts.append(f"<span class='rejected'>{_e(tokenizer.decode([draft]))}</span>")
        css, legend = SOURCE_STYLE[source]
        parts.append(f"<span class='{css}' title='{legend}'>{_e(tokenizer.decode([token]))}</span>")
    return "".join(parts)


def legend_html() -> str:
    return " ".join(f"<span class='{css}'>{legend}</span>" for css, legend in SOURCE_STYLE.values()) + \
        " <span class='rejected'>rejected draft</span>"


def edge_cloud_stream(cloud, edge, tokenizer, prompt: str, preset: str = "fluency", max_new_tokens: int = 48):
    """Edge/cloud decoding of ``prompt`` (S1, with the CJK processors and sentence stop), yielding the text so far
    with live statistics, then the coloured tokens with acceptance, cloud calls and the speed beside cloud-only
    decoding of the same prompt."""
    classes = TokenClasses.from_tokenizer(tokenizer)
    inputs = tokenizer(prompt, return_tensors="pt")
    prompt_len = inputs["input_ids"].shape[1]
    common = dict(max_new_tokens=max_new_tokens, do_sample=False, logits_processor=build_cjk_processors(classes),
                  stopping_criteria=build_sentence_stopping(classes, prompt_len))
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}

    def decode():
        try:
            result["out"] = cloud.generate(**inputs, **common, custom_generate=edge_cloud_generate, edge_model=edge,
                                           preset=preset, token_classes=classes, return_stats=True,
                                           edge_cloud_streamer=streamer)
        except Exception as error:  # re-raised below; ending the stream keeps the reader from waiting forever
            result["error"] = error
            streamer.end()

    started = time.perf_counter()
    worker = Thread(target=decode)
    worker.start()
    text = ""
    for piece in streamer:
        text += piece
        elapsed = time.perf_counter() - started
        yield (f"<div class='genlab-out' id='edge-text'>{_e(text)}</div>",
               f"decoding… {len(tokenizer(text, add_special_tokens=False)['input_ids'])} tokens in {elapsed:.2f} s")
    worker.join()
    if "error" in result:
        raise result["error"]
    edge_cloud_s = time.perf_counter() - started
    out = result["out"]
    started = time.perf_counter()
    cloud.generate(**inputs, **common)
    cloud_s = time.perf_counter() - started
    new = out.sequences[0, prompt_len:].tolist()
    coloured = sources_html(tokenizer, new, out.token_sources[0].tolist(), out.rejected_drafts[0].tolist())
    stats = (f"{len(new)} tokens in {edge_cloud_s:.2f} s ({len(new) / edge_cloud_s:.1f} tok/s); cloud-only decoding "
             f"of the same prompt: {cloud_s:.2f} s → speed-up {cloud_s / edge_cloud_s:.2f}× | acceptance "
             f"{out.acceptance_rate:.2f} | cloud calls {out.cloud_calls} of {out.blocks} blocks")
    yield (f"<div class='genlab-out' id='edge-text'>{coloured}<div class='meta'>{legend_html()}</div></div>", stats)
