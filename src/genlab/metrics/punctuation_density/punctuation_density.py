"""Character-level punctuation density of generated Chinese text (SPEC S6; seed 004 regression metric 1).

density(text) = characters of ``，。、：:；！？`` / characters. Target 10–25 % for one Chinese sentence; > 40 % is
the "字字逗" failure. Returns the mean over texts (``punct_density``) and the pooled ratio (``punct_density_micro``).
"""

import datasets
import evaluate

from genlab.cjk_text import PUNCTUATION_MARKS

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts (continuations only).
Returns:
    punct_density (float): mean per-text punctuation density; punct_density_micro (float): pooled over texts.
Example:
    >>> metric = evaluate.load(metric_path("punctuation_density"))
    >>> metric.compute(predictions=["我们，今天。", "好"])
    {'punct_density': 0.1666..., 'punct_density_micro': 0.2857...}
"""


class PunctuationDensity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"predictions": datasets.Value("string")}))

    def _compute(self, predictions):
        marks = [sum(c in PUNCTUATION_MARKS for c in text) for text in predictions]
        chars = [len(text) for text in predictions]
        per_text = [m / max(n, 1) for m, n in zip(marks, chars)]
        return {"punct_density": sum(per_text) / max(len(per_text), 1),
                "punct_density_micro": sum(marks) / max(sum(chars), 1)}
