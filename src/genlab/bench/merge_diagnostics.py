"""Where a spelling corrector's errors are lost (issue 12): threshold-free diagnostics on the substitution-only
pairs of a test set, separating errors not found (each detector's AUC) from errors found but not fixed (each
filler's accuracy when told where the errors are), and how many the confusion set can reach at all."""

from __future__ import annotations

import torch

from ..edits import edit_labels
from ..generation_refinement import substitution_candidates
from .csc import auc, batched, padded


def substitution_pairs(tokenizer, sources: list[str], targets: list[str]) -> list[tuple[str, str]]:
    """The pairs that differ, by substitutions only, with one token per character (the oracle script is then
    one deletion + one mask per wrong character)."""
    return [(s, t) for s, t in zip(sources, targets) if s != t and len(s) == len(t)
            and len(tokenizer(s, add_special_tokens=False)["input_ids"]) == len(s)]


@torch.no_grad()
def diagnose_batch(merge, baseline, ids: torch.Tensor, valid: torch.Tensor, gold: torch.Tensor,
                   fill_candidates: torch.Tensor, unk_id: int, fill_processor) -> dict[str, torch.Tensor]:
    """One batch of same-length (draft, gold) rows (B, L), right-padded: per scored draft token whether it is
    wrong and the two detectors' scores (MERGE's P(wrong), the baseline's 1 − p(token | row)); per wrong token
    whether MERGE's filler (a mask there from the true edit script, the Picker and Inserter bypassed) and the
    baseline (its argmax there) write the gold token, each among ``fill_candidates[draft token]``; and the fill
    detector's P(wrong) (``fill_wrong_prob``), over every token (``fill_score``) and over the candidates
    (``fill_confusion_score``); and MERGE's oracle fill and fill detector with ``fill_processor`` on top of the
    candidates."""
    scripts = [edit_labels(row[m].tolist(), want[m].tolist()) for row, want, m in zip(ids, gold, valid)]
    delete, insert = (torch.tensor([getattr(e, k) + [0] * (ids.shape[1] - len(e.delete)) for e in scripts])
                      for k in ("delete", "insert"))
    never = torch.tensor(merge._never_filled + [unk_id])
    out = merge(ids, valid.long(), edit=torch.ones(len(ids)), delete_labels=delete, insert_labels=insert)
    logits = out.logits.float().index_fill(-1, never, float("-inf"))
    allowed = substitution_candidates(ids, valid, out.deletions, out.mask_positions, fill_candidates)
    logits = logits.masked_fill(~allowed, float("-inf"))
    filled = logits.argmax(-1)  # (B, N) N ≥ L: the fused row is gold's
    masks = out.mask_positions[:, : ids.shape[1]]
    merge_right = (filled[:, : ids.shape[1]] == gold)[masks]
    rows, cols = masks.nonzero(as_tuple=True)  # the order of merge_right
    rescored = fill_processor(out.fused_ids[rows], cols, logits[rows, cols])
    none = torch.zeros(len(ids))
    base = baseline(ids, valid.long(), edit=none, num_insertions=none.long()).logits.float()  # (B, L, V)
    p_draft = base.softmax(-1).gather(-1, ids[..., None])[..., 0]
    base = base.index_fill(-1, never, float("-inf")).masked_fill(~fill_candidates[ids], float("-inf"))
    wrong = (ids != gold) & valid
    scored = valid & (ids != merge.config.bos_token_id)  # every token but <s>
    fill_free, fill_confusion = merge.fill_wrong_probs(ids, valid, (None, fill_candidates))
    fill_lexicon = merge.fill_wrong_prob(ids, valid, fill_candidates, fill_processor=fill_processor)
    return {"wrong": wrong[scored], "merge_score": out.delete_prob[scored], "baseline_score": 1 - p_draft[scored],
            "fill_score": fill_free[scored], "fill_confusion_score": fill_confusion[scored],
            "fill_lexicon_score": fill_lexicon[scored], "merge_right": merge_right,
            "merge_lexicon_right": rescored.argmax(-1) == gold[rows, cols],
            "baseline_right": (base.argmax(-1) == gold)[wrong]}


def error_diagnostics(merge, baseline, tokenizer, sources: list[str], targets: list[str],
                      fill_candidates: torch.Tensor, fill_processor, batch_size: int = 32) -> dict[str, float]:
    """Threshold-free figures on the substitution pairs (:func:`substitution_pairs`) that separate the two
    ways a corrector fails (:func:`diagnose_batch`): ``picker_auc``, ``fill_detector_auc`` /
    ``fill_detector_confusion_auc`` / ``fill_detector_lexicon_auc`` and ``baseline_detection_auc``, how well
    each detector ranks the wrong characters above the right ones (finding the errors); ``oracle_fill_accuracy``
    and ``baseline_oracle_fill_accuracy``, the share of wrong characters each writes right when told where they
    are (fixing them; confusion rule; ``oracle_fill_lexicon_accuracy`` with ``fill_processor`` too), and
    ``confusion_coverage``, the share whose right character is among the wrong one's candidates at all (the most
    the confusion rule can fix)."""
    pairs = substitution_pairs(tokenizer, sources, targets)
    parts = []
    for chunk in batched(pairs, batch_size):
        batch = padded(tokenizer, [s for s, _ in chunk])
        gold = padded(tokenizer, [t for _, t in chunk])["input_ids"]
        parts.append(diagnose_batch(merge, baseline, batch["input_ids"], batch["attention_mask"].bool(), gold,
                                    fill_candidates, tokenizer.unk_token_id, fill_processor))
    if not parts:
        return {"substitution_pairs": 0}
    whole = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return {"substitution_pairs": len(pairs), "substitution_errors": int(whole["wrong"].sum()),
            "picker_auc": auc(whole["merge_score"], whole["wrong"]),
            "fill_detector_auc": auc(whole["fill_score"], whole["wrong"]),
            "fill_detector_confusion_auc": auc(whole["fill_confusion_score"], whole["wrong"]),
            "fill_detector_lexicon_auc": auc(whole["fill_lexicon_score"], whole["wrong"]),
            "oracle_fill_accuracy": float(whole["merge_right"].float().mean()),
            "oracle_fill_lexicon_accuracy": float(whole["merge_lexicon_right"].float().mean()),
            "confusion_coverage": confusion_coverage(tokenizer, sources, targets, fill_candidates),
            "baseline_detection_auc": auc(whole["baseline_score"], whole["wrong"]),
            "baseline_oracle_fill_accuracy": float(whole["baseline_right"].float().mean())}


def confusion_coverage(tokenizer, sources: list[str], targets: list[str], candidates: torch.Tensor) -> float:
    """The share of the substitution pairs' wrong characters whose right character is in the wrong one's row of
    ``candidates`` (V, V): the most a confusion rule over them can fix."""
    hits = []
    for source, wanted in substitution_pairs(tokenizer, sources, targets):
        wrong, right = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in (source, wanted))
        hits.extend(bool(candidates[w, r]) for w, r in zip(wrong, right) if w != r)
    return sum(hits) / len(hits) if hits else float("nan")
