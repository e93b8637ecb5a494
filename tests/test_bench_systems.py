"""`genlab bench merge` and `genlab bench concept` end to end at nano size: every SPEC-B figure, finite."""

import json
import math

import pytest

from genlab.bench import REQUIRED_FIGURES
from genlab.cli import main


def read_figures(path):
    result = json.loads(path.read_text())
    assert set(result) == {"system", "machine", "config", "budget", "figures", "targets"}
    assert set(REQUIRED_FIGURES[result["system"]]) <= set(result["figures"])
    assert all(math.isfinite(v) for v in result["figures"].values())
    return result


def test_bench_merge_trains_the_ar_then_merge_and_baseline_for_the_same_steps_and_writes_every_figure(tmp_path):
    out = tmp_path / "merge.json"
    assert main(["bench", "merge", "--json", str(out), "--runs", str(tmp_path / "runs"), "--preset", "nano",
                 "--train-steps", "3", "--ar-steps", "4", "--judge", str(tmp_path / "runs" / "ar-nano"), "--skip-ablations",
                 "--validation-sentences", "8", "--sighan-sentences", "12",
                 "--thresholds", "0.5,0.9", "--lexicon-weights", "0.5,2", "--samples", "2", "--repeats", "1"]) == 0
    result = read_figures(out)
    figures = result["figures"]
    assert figures["speedup_b1"] > 0 and 1 <= figures["mean_rounds"] <= 4
    assert 0 <= figures["sighan15_correction_f1"] <= 1 and 0 <= figures["sighan15_clean_fpr"] <= 1
    assert figures["identity_correction_f1"] == 0 and figures["identity_clean_fpr"] == 0  # changes nothing
    assert figures["delete_threshold"] in (0.5, 0.9)
    curves = result["config"]["threshold_curves"]  # every (threshold, round cap ≤ 3) tried on validation
    assert {(row["threshold"], row["rounds"]) for row in curves["fill_lexicon"]} == {
        (t, r) for t in (0.5, 0.9) for r in (1, 2, 3)}
    assert figures["edit_rounds_chosen"] == result["config"]["rounds"] in (1, 2, 3)
    assert sum(figures[f"edit_rounds_frac_{r}"] for r in range(1, result["config"]["rounds"] + 1)) == pytest.approx(1)
    for system in ("picker_free", "picker_confusion", "fill_free", "fill_confusion", "fill_lexicon", "fill_fuzzy"):
        assert 0 <= figures[f"sighan15_{system}_correction_f1"] <= 1  # the headline is validation's choice
    for fill in ("free", "confusion", "lexicon", "fuzzy"):
        assert 0 <= figures[f"baseline_{fill}_clean_fpr"] <= 1
    for detector in ("picker", "fill"):
        assert figures[f"sighan15_{detector}_sentences_per_s_b32"] > 0
    assert figures["sighan15_diagnostic/substitution_pairs"] > 0  # where errors are lost: finding or filling
    for name in ("picker_auc", "fill_detector_auc", "fill_detector_confusion_auc", "fill_detector_lexicon_auc",
                 "oracle_fill_accuracy", "oracle_fill_lexicon_accuracy", "confusion_coverage", "baseline_detection_auc",
                 "baseline_oracle_fill_accuracy", "confusion_coverage_fuzzy"):
        assert 0 <= figures[f"sighan15_diagnostic/{name}"] <= 1, name
    chosen = result["config"]["system"]
    for system in ("fill_lexicon", "fill_fuzzy"):  # each weight's best on validation
        assert set(result["config"]["lexicon_weights_validation"][system]) == {"0.5", "2.0"}
    prior = ("lexicon", "fuzzy")
    assert result["config"]["lexicon_weight"] in ((0.5, 2.0) if chosen.endswith(prior) else (None,))
    assert result["config"]["baseline_lexicon_weight"] in ((0.5, 2.0) if result["config"]["baseline_fill"] in prior
                                                           else (None,))
    assert figures["sighan15_correction_f1"] == figures[f"sighan15_{chosen}_correction_f1"]
    for system in ("fill_lexicon", "fill_fuzzy", "auto", "baseline_fuzzy"):  # the second test set, same settings
        assert 0 <= figures[f"eval500/{system}_correction_f1"] <= 1
    assert figures["eval500/identity_clean_fpr"] == 0 and figures["eval500/identity_correction_f1"] == 0
    assert figures["eval500/merge_clean_fpr"] == figures[f"eval500/{chosen}_clean_fpr"]
    assert figures["eval500/sentences"] == 12
    assert figures["sighan15_sentences_per_s_b1"] == figures[f"sighan15_{chosen.split('_')[0]}_sentences_per_s_b1"]
    for name in ("merge", "baseline"):  # both fillers start from the AR trained first, on the validation's typos
        manifest = json.loads((tmp_path / "runs" / f"{name}-nano" / "genlab_run.json").read_text())
        assert manifest["filler_init"] == str(tmp_path / "runs" / "ar-nano") and manifest["typo_noise"]["fuzzy"]
    steps = {name: json.loads((tmp_path / "runs" / f"{name}-nano" / "genlab_run.json").read_text())["steps"]
             for name in ("merge", "baseline", "ar")}
    assert steps == {"merge": 3, "baseline": 3, "ar": 4} and figures["train_steps"] == 3
    assert figures["ar_train_steps"] == 4


def test_bench_concept_measures_the_headline_at_2048_and_refuses_other_contexts(tmp_path, capsys):
    common = ["bench", "concept", "--base", str(tmp_path / "base"), "--preset", "nano", "--base-steps", "4",
              "--finetune-steps", "3", "--layers", "1,0,1", "--ratios", "0.25", "--new-tokens", "3",
              "--eval-blocks", "4", "--repeats", "1", "--work-dir", str(tmp_path / "work")]
    with pytest.raises(SystemExit) as refused:  # refused like any bad flag, before anything is trained
        main([*common, "--contexts", "128"])
    assert refused.value.code == 2 and "--contexts must include 2048" in capsys.readouterr().err
    assert not (tmp_path / "base").exists()
    out = tmp_path / "concept.json"
    assert main([*common, "--contexts", "2048", "--json", str(out)]) == 0
    figures = read_figures(out)["figures"]
    assert figures["decode_speedup_2048"] == figures["decode_speedup_2048_b1"]
    assert 0 < figures["compression_ratio"] <= 1
