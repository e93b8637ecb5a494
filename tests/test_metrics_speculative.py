"""The edge/cloud regression metrics (SPEC S6) as offline `evaluate` modules."""

import evaluate
import pytest

from genlab.metrics import SPECULATIVE_METRICS, metric_path, speculative_metric_paths


@pytest.fixture(scope="module")
def metrics():
    return {name: evaluate.load(path) for name, path in speculative_metric_paths().items()}


def test_every_speculative_metric_loads_offline(metrics):
    assert set(metrics) == set(SPECULATIVE_METRICS)
    with pytest.raises(ValueError, match="metric must be one of"):
        metric_path("bleu")


def test_punctuation_density_is_character_level(metrics):
    result = metrics["punctuation_density"].compute(predictions=["字，字，字，", "我们今天去北京。"])
    assert result["punct_density"] == pytest.approx((3 / 6 + 1 / 8) / 2)
    assert result["punct_density_micro"] == pytest.approx(4 / 14)
    assert metrics["punctuation_density"].compute(predictions=[""])["punct_density"] == 0.0


def test_repeat_rates_ignore_punctuation_and_catch_short_loops(metrics):
    loop = metrics["cjk_repetition"].compute(predictions=["员在，员在，员在"])
    # stripped 员在员在员在: bigrams 员在 在员 员在* 在员* 员在* → 3/5; trigrams 员在员 在员在 员在员* 在员在* → 2/4
    assert loop["repeat_rate_2"] == pytest.approx(3 / 5) and loop["repeat_rate_3"] == pytest.approx(2 / 4)
    assert loop["adjacent_identical_rate"] == 0.0
    stutter = metrics["cjk_repetition"].compute(predictions=["真真想去", "ab好"])
    assert stutter["adjacent_identical_rate"] == pytest.approx(1 / 3)  # 真真 真想 想去 (a-b, b-好 not CJK pairs)
    clean = metrics["cjk_repetition"].compute(predictions=["今天天气很好"])
    assert clean["repeat_rate_3"] == 0.0 and clean["adjacent_identical_rate"] == pytest.approx(1 / 5)


def test_cloud_call_and_acceptance_rates_pool_counts(metrics):
    assert metrics["cloud_call_rate"].compute(cloud_calls=[0, 3], blocks=[5, 5])["cloud_call_rate"] == 0.3
    assert metrics["acceptance_rate"].compute(accepted=[4, 2], verified=[4, 8])["acceptance_rate"] == 0.5
    with pytest.raises(ValueError, match="accepted must be between"):
        metrics["acceptance_rate"].compute(accepted=[5], verified=[4])
    with pytest.raises(ValueError, match="cloud_calls must be between"):
        metrics["cloud_call_rate"].compute(cloud_calls=[6], blocks=[5])
