"""Acceptance rate of edge/cloud decoding (SPEC S6; seed 004 regression metric 3; target > 0.6).

Drafted tokens the cloud accepted / drafted tokens it verified, pooled over generations (``EdgeCloudOutput``'s
``accepted`` and ``verified``).
"""

import datasets
import evaluate

_KWARGS_DESCRIPTION = """
Args:
    accepted (list of int): accepted drafted tokens per generation.
    verified (list of int): drafted tokens the cloud verified per generation.
Returns:
    acceptance_rate (float): sum(accepted) / sum(verified).
Example:
    >>> evaluate.load(metric_path("acceptance_rate")).compute(accepted=[3, 1], verified=[4, 4])
    {'acceptance_rate': 0.5}
"""


class AcceptanceRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"accepted": datasets.Value("int64"),
                                                               "verified": datasets.Value("int64")}))

    def _compute(self, accepted, verified):
        if any(a < 0 or a > v for a, v in zip(accepted, verified)):
            raise ValueError("accepted must be between 0 and verified for every generation")
        return {"acceptance_rate": sum(accepted) / max(sum(verified), 1)}
