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


def test_bench_merge_trains_both_sides_within_budget_and_writes_every_figure(tmp_path):
    out = tmp_path / "merge.json"
    assert main(["bench", "merge", "--json", str(out), "--runs", str(tmp_path / "runs"), "--preset", "nano",
                 "--budget", "4", "--judge-budget", "2", "--skip-ablations", "--edit-sentences", "4",
                 "--samples", "2", "--repeats", "1"]) == 0
    result = read_figures(out)
    assert result["figures"]["speedup_b1"] > 0 and 1 <= result["figures"]["mean_rounds"] <= 6
    assert 0 <= result["figures"]["edit_exact_repair"] <= 1
    ar_manifest = json.loads((tmp_path / "runs" / "ar-nano" / "genlab_run.json").read_text())
    assert ar_manifest["steps"] >= 1


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
