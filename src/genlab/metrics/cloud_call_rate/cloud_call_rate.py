"""Cloud-call rate of edge/cloud decoding (SPEC S6; seed 004 regression metric 3): cloud forwards / drafted blocks.

Inputs per generation: ``cloud_calls`` and ``blocks`` (``EdgeCloudOutput.cloud_calls`` / ``.blocks``); pooled.
"""

import datasets
import evaluate

_KWARGS_DESCRIPTION = """
Args:
    cloud_calls (list of int): cloud verification forwards per generation.
    blocks (list of int): drafted blocks per generation.
Returns:
    cloud_call_rate (float): sum(cloud_calls) / sum(blocks).
Example:
    >>> evaluate.load(metric_path("cloud_call_rate")).compute(cloud_calls=[1, 2], blocks=[4, 4])
    {'cloud_call_rate': 0.375}
"""


class CloudCallRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"cloud_calls": datasets.Value("int64"),
                                                               "blocks": datasets.Value("int64")}))

    def _compute(self, cloud_calls, blocks):
        if any(c < 0 or c > b for c, b in zip(cloud_calls, blocks)):
            raise ValueError("cloud_calls must be between 0 and blocks for every generation")
        return {"cloud_call_rate": sum(cloud_calls) / max(sum(blocks), 1)}
