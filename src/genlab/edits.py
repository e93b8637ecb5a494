"""Edit scripts between token sequences: MERGE's aligned training labels (issue 12, SPEC M2–M6).

A draft becomes its target by deleting some draft tokens and inserting target tokens into the gaps after the
kept ones. :func:`edit_labels` reads that script off a minimal Levenshtein alignment (``rapidfuzz``'s opcodes;
a substitution is a deletion plus one insertion in the same gap) and gives, per draft token, whether to delete
it and how many target tokens go in the gap after it. Applying those labels (:func:`apply_edit_labels`)
rebuilds the target exactly, so the fill targets of MERGE's masks are aligned by construction — the index
alignment of the seeds' recipe (B1) scored 0 % of its edit rows correctly.

The first token (``<s>``) is never deleted, so every insertion has a kept token on its left.
"""

from __future__ import annotations

from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein


@dataclass(frozen=True)
class EditLabels:
    """Per draft token: ``delete`` (1: not in the target) and ``insert`` (target tokens missing in the gap after
    it; always 0 on deleted tokens); ``fill`` is the target tokens of every gap, left to right."""

    delete: list[int]
    insert: list[int]
    fill: list[int]


def edit_labels(draft: list[int], target: list[int]) -> EditLabels:
    """The deletion, per-gap insertion and fill labels that turn ``draft`` into ``target``.

    Both must start with the same token (``<s>``): it anchors the first gap. Ties between equally short edit
    scripts are broken by rapidfuzz's alignment, which is deterministic.
    """
    if not draft or not target or draft[0] != target[0]:
        raise ValueError("draft and target must both start with the same (bos) token")
    delete, insert, fill = [0] * len(draft), [0] * len(draft), []
    last_kept = 0
    for op, d0, d1, t0, t1 in Levenshtein.opcodes(draft, target):
        if op == "equal":
            last_kept = d1 - 1
            continue
        for i in range(d0, d1):  # replace / delete: the draft tokens go
            delete[i] = 1
        insert[last_kept] += t1 - t0  # replace / insert: the target tokens land in the gap after the last kept
        fill.extend(target[t0:t1])
    return EditLabels(delete, insert, fill)


def apply_edit_labels(draft: list[int], labels: EditLabels, mask_id: int | None = None) -> list[int]:
    """The sequence MERGE's fuse step builds from ``labels``: kept tokens, then each gap's insertions — the
    target tokens themselves, or ``mask_id`` placeholders when given."""
    fill = iter(labels.fill)
    out = []
    for token, gone, count in zip(draft, labels.delete, labels.insert):
        if not gone:
            out.append(token)
        out.extend(next(fill) if mask_id is None else mask_id for _ in range(count))
    return out


def changed_positions(source: list, output: list) -> set[int]:
    """Indices of ``source`` an output edits: deleted or substituted, or followed by an insertion."""
    changed = set()
    for op, s0, s1, _, _ in Levenshtein.opcodes(source, output):
        if op in ("replace", "delete"):
            changed.update(range(s0, s1))
        elif op == "insert":
            changed.add(max(s0 - 1, 0))
    return changed
