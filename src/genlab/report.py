"""The `genlab demo` report: Markdown (``report.md``), its HTML rendering (``report.html``) and PNG plots (SPEC H8).

Input: the JSON-able results of the demo's stages (``genlab.demo``), the Trainer log histories of its runs and
the model table. Every number printed here was measured by the demo (or read from a run's manifest); nothing is
typed in. Plots (``RUN_DIR/plots/``): training curves of each model, tokens/s ratios against the AR baseline,
MERGE rounds histogram, planner monitor curves.
"""

from __future__ import annotations

import json
from pathlib import Path

import markdown

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVE_KEYS = ("loss", "train_loss")  # the Trainer's running loss per logging step


def _fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    cell = lambda v: _fmt(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in rows] + [""]


# -- plots ------------------------------------------------------------------------------------------------------
def plot_training_curves(logs: dict[str, list[dict]], path: Path) -> Path:
    """One panel per run: the Trainer's logged training loss against the step."""
    fig, axes = plt.subplots(1, len(logs), figsize=(3.2 * len(logs), 2.8), squeeze=False)
    for ax, (name, history) in zip(axes[0], logs.items()):
        points = [(e["step"], e["loss"]) for e in history if "loss" in e and "step" in e]
        if points:
            ax.plot(*zip(*points), marker=".")
        else:
            ax.text(0.5, 0.5, "no logged step", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(name)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def speed_ratios(results: dict) -> dict[str, float]:
    """Decoding speed of each system as a ratio to its AR reference, all measured in the demo's own process."""
    merge, concept = results["merge"]["figures"], results["concept"]["figures"]
    spec, planner = results["speculative"]["figures"], results["planner"]["figures"]
    return {"MERGE gen, batch 1": merge["speedup_b1"], "MERGE gen, batch 32": merge["speedup_b32"],
            "concept decode @2048": concept["decode_speedup_2048"],
            "edge/cloud lossless": spec["lossless_speedup_vs_cloud"],
            "HF assisted (same pair)": spec["hf_assisted_speedup_vs_cloud"],
            "planner executor*": planner["executor_decode_ratio"]}


def plot_speed_bars(ratios: dict[str, float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.barh(list(ratios), list(ratios.values()), color="tab:blue")
    ax.axvline(1.0, color="black", linestyle="--", label="AR baseline = 1")
    ax.set_xlabel("tokens/s ÷ AR baseline tokens/s")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def rounds_fractions(figures: dict, mode: str) -> dict[int, float]:
    """{rounds: share of sequences} of one mode from the bench's ``<mode>_rounds_frac_<r>`` figures."""
    prefix = f"{mode}_rounds_frac_"
    return {int(k[len(prefix):]): v for k, v in figures.items() if k.startswith(prefix)}


def plot_rounds_histogram(gen: dict[int, float], edit: dict[int, float], path: Path) -> Path:
    """Share of sequences per number of rounds used, gen mode beside edit mode."""
    fig, ax = plt.subplots(figsize=(5, 3))
    rounds = sorted(set(gen) | set(edit))
    ax.bar([r - 0.2 for r in rounds], [gen.get(r, 0.0) for r in rounds], width=0.4, label="gen mode (from <s>)")
    ax.bar([r + 0.2 for r in rounds], [edit.get(r, 0.0) for r in rounds], width=0.4, label="edit mode (corrupted)")
    ax.set_xlabel("rounds used")
    ax.set_ylabel("share of sequences")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


MONITOR_KEYS = ("delta_nll_shuffle", "top1_margin", "flip_rate", "staleness_gap", "planner_entropy",
                "planner_max_prob", "soft_hard_cosine", "planner_grad_norm")


def plot_planner_monitors(log_history: list[dict], path: Path) -> Path:
    """The planner run's losses, P6 monitor readings and z* source win rates over training steps, one panel
    each; a reading the run never logged gets no (empty) panel."""
    def points(name: str) -> list[tuple]:
        return [(e["step"], e[name]) for e in log_history if name in e and "step" in e]

    panels = {key: {key: points(key if key in ("executor_loss", "planner_loss") else f"monitor/{key}")}
              for key in ("executor_loss", "planner_loss") + MONITOR_KEYS}
    panels["z* won by"] = {name[len("monitor/win_"):]: points(name) for name in
                           sorted({k for e in log_history for k in e if k.startswith("monitor/win_")})}
    panels = {title: lines for title, lines in panels.items() if any(lines.values())}
    columns = 5
    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.5 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.remove()
    for ax, (title, lines) in zip(axes.flat, panels.items()):
        for label, data in lines.items():
            if data:
                ax.plot(*zip(*data), marker=".", label=label)
        if len(lines) > 1:
            ax.legend(fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("step")
    fig.suptitle("planner–executor hard-EM monitors (SPEC P6)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# -- sections -----------------------------------------------------------------------------------------------------
def section_ar(result: dict) -> list[str]:
    m, f = result["manifest"], result["figures"]
    lines = ["## Autoregressive baseline (Qwen2)", "",
             f"Preset `{m['preset']}`, {m['parameters'] / 1e6:.2f} M parameters, {m['steps']} steps; validation "
             f"perplexity **{f['val_ppl']:.2f}** (the unigram model of the training text: {f['unigram_val_ppl']:.0f}); "
             f"greedy KV-cached generation **{f['gen_tok_s_b1']:.1f} tok/s** at "
             f"batch 1, {f['gen_tok_s_b32']:.1f} tok/s at batch 32; training {f['train_tok_s']:.0f} tok/s.", ""]
    return lines + _table(["prompt", "greedy continuation"], result["samples"])


def section_merge(result: dict) -> list[str]:
    f, c = result["figures"], result["config"]
    judge = ("judged by the AR baseline itself, so biased towards the AR side" if c["judge"] == c["runs_used"]["ar"]
             else f"judged by `{c['judge']}`")
    lines = ["## MERGE: repairing and generating in parallel rounds", "",
             f"SIGHAN-15 spelling correction ({c['sighan15']}, ≤ {c.get('rounds', c['edit_rounds'])} rounds and "
             f"deletion threshold {f['delete_threshold']:g}, the {c['detector']} detector and the {c['fill']} fill "
             f"rule chosen on the corpus's validation split; "
             f"the filler starts from {'the AR' if result['manifest'].get('filler_init') else 'scratch'}): "
             f"correction F1 "
             f"**{f['sighan15_correction_f1']:.3f}** in edit mode, {f['sighan15_auto_correction_f1']:.3f} in auto "
             f"mode, {f['baseline_correction_f1']:.3f} for the per-character corrector of the same size and steps; "
             f"detection F1 {f['sighan15_detection_f1']:.3f}; clean sentences changed "
             f"{f['sighan15_clean_fpr']:.1%}; {f['sighan15_sentences_per_s_b1']:.1f} sentences/s at batch 1. "
             f"Generation ({c['new_tokens']} tokens from `<s>`, ≤ {c['gen_rounds']} Mask-Predict rounds): "
             f"**{f['speedup_b1']:.2f}×** the AR baseline's tokens/s at batch 1, **{f['speedup_b32']:.2f}×** at "
             f"batch 32, {f['mean_rounds']:.2f} rounds on average; perplexity {f['gen_ppl_ratio']:.2f}× the AR's "
             f"({judge}), distinct-2 {f['distinct2_ratio']:.2f}× the AR's.", "",
             "### SIGHAN-15 repairs, round by round", ""]
    for row in result["repairs"]:
        lines += [f"- reference `{row['target']}` — written `{row['draft']}`"] + _round_trace(row["steps"])
    lines += ["", "### Generation, round by round", ""]
    for row in result["generations"]:
        lines += [f"- prompt `{row['prompt']}`"] + _round_trace(row["steps"])
    return lines + [""]


def _round_trace(steps: list[dict]) -> list[str]:
    """One nested list item per MERGE round (indented 4 spaces, which Python-Markdown needs to nest): gate,
    inserted masks, confidence, the text after the round."""
    return [f"    - round {s['round']} (gate {s['gate']:.0f}, +{s['inserted']:.0f} masks, confidence "
            f"{s['confidence']:.2f}): `{s['text']}`" for s in steps]


def section_concept(result: dict) -> list[str]:
    f = result["figures"]
    contexts = sorted({int(k.split("_")[2]) for k in f if k.startswith("decode_speedup_") and k.count("_") == 3})
    lines = ["## Online concept compression on the AR base", "",
             f"The model runs at **{f['compression_ratio']:.3f}** concepts per token (noise-free decisions, as in "
             f"decoding, on validation text: {f['inference_rate_ratio']:.2f}× the target r, "
             f"{f['natural_fire_fraction']:.0%} of them chosen by the head rather than forced); permuting the concept "
             f"vectors across positions raises the NLL by {f['delta_nll_concepts_permuted']:+.3f} nats/token, zeroing "
             f"them by {f['delta_nll_concepts_zeroed']:+.3f}; perplexity {f['val_ppl']:.2f} vs the base's {f['base_val_ppl']:.2f} "
             f"(ratio {f['ppl_ratio']:.3f}); one LoRA training step takes **{f['step_time_ratio']:.2f}×** the base's "
             f"(predicted FLOPs fraction, heads included, {f['flops_fraction_pred']:.2f}).", ""]
    lines += _table(["context", "decode speed-up b1", "decode speed-up b8", "KV-cache bytes ratio"],
                    [[c, f[f"decode_speedup_{c}_b1"], f[f"decode_speedup_{c}_b8"], f[f"kv_cache_ratio_{c}"]]
                     for c in contexts])
    lines += ["Where the ConceptHead fires (`|` after a token that became a concept):", ""]
    lines += [f"- `{text}`" for text in result["boundaries"]] + [""]
    return lines + _table(["prompt", "base (greedy)", "concept model (greedy)"], result["continuations"])


def section_planner(result: dict) -> list[str]:
    f = result["figures"]
    lines = ["## Planner–executor: concepts first, then text", "",
             "Task: keywords → sentence (u = a held-out sentence's content words, shuffled, plus two distractors). "
             f"Greedy generations from u contain **{f['keyword_coverage']:.0%}** of the keywords the sentence uses "
             f"(same-size AR p(y|u): {f['ar_keyword_coverage']:.0%}; target ≥ 80 %).", "",
             f"Held-out NLL per text token: executor from the planner's own plan {f['nll_planner_z']:.3f}, from "
             f"the E-step's plan z* {f['nll_zstar']:.3f}, same-size AR p(y|u) {f['nll_ar']:.3f} (ratio "
             f"{f['nll_ratio_vs_ar']:.3f}). Replacing z* by another example's plan raises the NLL by "
             f"**{f['delta_nll_shuffle']:+.3f}** nats/token (all-mask {f['delta_nll_mask']:+.3f}, random "
             f"{f['delta_nll_random']:+.3f}); dropping half of the concepts {f['concept_drop_50']:+.3f}. Executor "
             f"decoding runs at {f['executor_decode_ratio']:.2f}× a plain Qwen2 of its size (*: that is the reference "
             "in the speed plot).", "",
             f"Without a planner — u's own words, distractors included, as the plan — the executor covers "
             f"{f['u_plan_keyword_coverage']:.0%} at NLL {f['nll_u_plan']:.3f}: what the planner's selection adds "
             "is the difference.", "",
             "Concepts are u's words that the sentence uses (text tokens, un-hashed, \"、\" between words).", ""]
    return lines + _table(["context u", "planner's concepts", "executor's text", "text from shuffled concepts"],
                          [[e["u"], e["concepts"], e["text"], e["shuffled_text"]] for e in result["examples"]])


def section_speculative(result: dict) -> list[str]:
    f = result["figures"]
    lines = ["## Edge/cloud speculative decoding", "",
             f"Benchmark (`genlab bench speculative`, {int(f['generated_tokens'])} tokens on held-out prompts, "
             f"with the CJK processors): lossless speed-up **{f['lossless_speedup_vs_cloud']:.2f}×** over cloud-only "
             f"(HF assisted generation {f['hf_assisted_speedup_vs_cloud']:.2f}×), acceptance "
             f"**{f['acceptance_rate']:.2f}**, output equal to cloud-only for {f['lossless_equals_cloud']:.0%} of the "
             f"prompts; gated (fluency) cloud-call rate **{f['gated_cloud_call_rate']:.2f}**, agreement with the "
             f"cloud {f['gated_agreement']:.2f}; punctuation density {f['punct_density']:.3f} with the processors, "
             f"{f['punct_density_off']:.3f} without.", "",
             "With and without the CJK processors (greedy, same prompts, timed interleaved in this process):", ""]
    lines += _table(["processors", "mode", "speed-up vs cloud-only", "acceptance", "cloud-call rate",
                     "same text as cloud-only"],
                    [[r["arm"], r["method"], r["speedup_vs_cloud"], r["acceptance_rate"], r["cloud_call_rate"],
                      r["same_text_as_cloud"]] for r in result["rates"]])
    return lines + _table(["processors", "prompt", "cloud-only", "lossless edge/cloud", "gated (fluency)"],
                          [[t["arm"], t["prompt"], t["cloud-only"], t["lossless"], t["fluency"]]
                           for t in result["texts"]])


def section_models(models: dict, summary: dict, results: dict) -> list[str]:
    lines = ["## Models, cards and how to load them", "",
             f"Preset `{summary['preset']}`, fixed training steps per model (safety cap {summary['budget_s']:g} s "
             f"each); this run took "
             f"{summary['total_s'] / 60:.1f} min (stages: "
             + ", ".join(f"{name} {r['stage_s']:.0f} s" for name, r in results.items()) + ").", ""]
    lines += _table(["model", "run directory", "model card", "pushed"],
                    [[n, f"`{m['run_dir']}`", f"`{m['card']}`", m["pushed"] or "—"] for n, m in models.items()])
    lines += ["```python", "from transformers import AutoModel, AutoModelForCausalLM", ""]
    lines += [f"{name.replace('-', '_')} = {m['load']}" for name, m in models.items()]
    return lines + ["```", ""]


# system → (quality figure, its baseline figure or None, speed figure): a verdict never quotes speed alone
HEADLINES = {
    "ar": ("val_ppl", "unigram_val_ppl", "gen_tok_s_b1"),  # the baseline: token frequencies alone
    "merge": ("sighan15_correction_f1", "baseline_correction_f1", "sighan15_sentences_per_s_b1"),
    "concept": ("ppl_ratio", None, "decode_speedup_2048"),
    "planner": ("keyword_coverage", "ar_keyword_coverage", "executor_decode_ratio"),
    "speculative": ("lossless_equals_cloud", None, "lossless_speedup_vs_cloud"),
}


def verdict(result: dict) -> str:
    """``works`` when every target of the system's bench is met, else the missed ones with their values."""
    targets = result.get("targets")
    if not targets:
        return "no targets recorded (re-measure the stage)"
    figures = result["figures"]
    missed = [f"{name}{f' {_fmt(figures[name])}' if name in figures else ''} (goal {t['goal']})"  # some are derived
              for name, t in targets.items() if not t["met"]]
    return "works: every target met" if not missed else "does not yet: " + "; ".join(missed)


def section_verdicts(results: dict, cut_short: list[str] = ()) -> list[str]:
    """One row per system: the quality figure beside its baseline, the speed figure beside it, the verdict;
    then every model the safety cap stopped short of its steps."""
    rows = []
    for system, (quality, baseline, speed) in HEADLINES.items():
        f = results[system]["figures"]
        shown = f"{quality} {_fmt(f[quality])}" + (f" (baseline {_fmt(f[baseline])})" if baseline else "")
        rows.append([system, shown, f"{speed} {_fmt(f[speed])}", verdict(results[system])])
    warnings = [f"- **Not representative**: {note}" for note in cut_short]
    return ["## Verdicts", ""] + _table(["system", "quality", "speed", "verdict"], rows) + warnings + ([""] if warnings else [])


SECTIONS = {"ar": section_ar, "merge": section_merge, "concept": section_concept, "planner": section_planner,
            "speculative": section_speculative}


# Chinese needs a CJK font: the first one installed wins; tables scroll instead of overflowing, images fit
REPORT_CSS = (
    "body{font-family:system-ui,-apple-system,'Noto Sans CJK SC','Source Han Sans SC','PingFang SC',"
    "'Microsoft YaHei','WenQuanYi Micro Hei',sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;"
    "line-height:1.5;color:#1b1f23}"
    "img{max-width:100%;height:auto}"
    "table{border-collapse:collapse;display:block;overflow-x:auto;margin:1rem 0}"
    "th,td{border:1px solid #d0d7de;padding:.3rem .6rem;vertical-align:top}th{background:#f6f8fa}"
    "pre,code{font-family:ui-monospace,'Noto Sans Mono CJK SC',monospace}pre{overflow-x:auto;background:#f6f8fa;"
    "padding:.6rem}"
)


def write_report(root: Path, results: dict, logs: dict[str, list[dict]], models: dict, summary: dict) -> dict:
    """Plots into ``root/plots``, then ``report.md``, ``report.html`` and ``report.json`` (the raw results)."""
    plots = root / "plots"
    plots.mkdir(exist_ok=True)
    images = {
        "Training curves": plot_training_curves(logs, plots / "training_curves.png"),
        "Decoding speed against the AR baseline": plot_speed_bars(speed_ratios(results), plots / "speed_vs_ar.png"),
        "MERGE rounds": plot_rounds_histogram(rounds_fractions(results["merge"]["figures"], "gen"),
                                              rounds_fractions(results["merge"]["figures"], "edit"),
                                              plots / "merge_rounds.png"),
        "Planner monitors": plot_planner_monitors(logs["planner"], plots / "planner_monitors.png"),
    }
    body = ["# genlab demo report", ""] + section_verdicts(results, summary.get("cut_short", []))
    for name, render in SECTIONS.items():
        body += render(results[name])
    terminal = "\n".join(body + section_models(models, summary, results))
    body += ["## Plots", ""] + [f"![{title}](plots/{path.name})" for title, path in images.items()] + [""]
    text = "\n".join(body + section_models(models, summary, results))
    md_path, html_path = root / "report.md", root / "report.html"
    md_path.write_text(text, encoding="utf-8")
    html = markdown.markdown(text, extensions=["tables", "fenced_code"])
    html_path.write_text(f"<!doctype html>\n<html lang='zh-CN'><head><meta charset='utf-8'>"
                         f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                         f"<title>genlab demo report</title><style>{REPORT_CSS}</style></head><body>\n{html}\n"
                         f"</body></html>\n", encoding="utf-8")
    (root / "report.json").write_text(json.dumps({"results": results, "models": models, "summary": summary},
                                                 ensure_ascii=False, indent=1), encoding="utf-8")
    return {"markdown": md_path, "html": html_path, "plots": list(images.values()), "terminal": terminal}
