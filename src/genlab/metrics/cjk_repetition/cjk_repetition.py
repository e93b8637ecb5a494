"""CJK short-loop repetition of generated text (SPEC S6; seed 004 regression metric 2).

Over the punctuation-stripped CJK characters of each text, ``repeat_rate_2`` / ``repeat_rate_3`` is the share
of 2-/3-grams that already occurred earlier in the same text ("员在员在"), pooled over texts;
``adjacent_identical_rate`` is the share of adjacent CJK character pairs in the raw text that are identical
("真真"), pooled over texts.
"""

import datasets
import evaluate

from genlab.cjk_text import is_cjk_char

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
Returns:
    repeat_rate_2, repeat_rate_3, adjacent_identical_rate (floats in [0, 1]).
Example:
    >>> evaluate.load(metric_path("cjk_repetition")).compute(predictions=["员在员在，好好"])
    {'repeat_rate_2': 0.2, 'repeat_rate_3': 0.0, 'adjacent_identical_rate': 0.25}
"""


def _repeats(chars, n):
    seen, repeats, total = set(), 0, 0
    for i in range(len(chars) - n + 1):
        gram = tuple(chars[i : i + n])
        repeats += gram in seen
        total += 1
        seen.add(gram)
    return repeats, total


class CJKRepetition(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"predictions": datasets.Value("string")}))

    def _compute(self, predictions):
        counts = {2: [0, 0], 3: [0, 0]}
        same, pairs = 0, 0
        for text in predictions:
            content = [c for c in text if is_cjk_char(c)]
            for n in counts:
                repeats, total = _repeats(content, n)
                counts[n][0] += repeats
                counts[n][1] += total
            cjk_pairs = [(a, b) for a, b in zip(text, text[1:]) if is_cjk_char(a) and is_cjk_char(b)]
            same += sum(a == b for a, b in cjk_pairs)
            pairs += len(cjk_pairs)
        return {"repeat_rate_2": counts[2][0] / max(counts[2][1], 1),
                "repeat_rate_3": counts[3][0] / max(counts[3][1], 1),
                "adjacent_identical_rate": same / max(pairs, 1)}
