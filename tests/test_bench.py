"""The shared benchmark format (SPEC B) and `genlab bench ar`."""

import json
import math

import pytest

import genlab.timing
from genlab.bench import paired_seconds, render_table, target, update_readme, write_result
from genlab.cli import main

AR_FIGURES = {"gen_tok_s_b1": 10.0, "gen_tok_s_b32": 100.0, "train_tok_s": 50.0, "val_ppl": 30.0}


def test_write_result_has_every_section_and_the_machine(tmp_path):
    result = write_result(tmp_path / "ar.json", "ar", config={"preset": "nano"}, budget={"steps": 1},
                          figures=AR_FIGURES, targets={"val_ppl": target(30.0, "≤", 50)})
    on_disk = json.loads((tmp_path / "ar.json").read_text())
    assert on_disk == result
    assert set(result) == {"system", "machine", "config", "budget", "figures", "targets"}
    assert {"cpu", "threads", "torch", "transformers"} <= set(result["machine"])
    assert result["targets"]["val_ppl"] == {"goal": "≤ 50", "met": True}


def test_missing_required_figure_or_unknown_system_is_rejected():
    with pytest.raises(ValueError, match="missing figures"):
        write_result(None, "ar", config={}, budget={}, figures={"val_ppl": 1.0}, targets={})
    with pytest.raises(ValueError, match="system must be one of"):
        write_result(None, "gpt", config={}, budget={}, figures={}, targets={})
    with pytest.raises(ValueError, match="op must be one of"):
        target(1.0, "=", 1.0)


def test_readme_tables_are_regenerated_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:ar -->\nold table\n<!-- /bench:ar -->\noutro\n")
    result = write_result(None, "ar", config={}, budget={}, figures=AR_FIGURES, targets={})
    update_readme(readme, {"ar": result})
    text = readme.read_text()
    assert "old table" not in text and render_table(result) in text
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert "| `gen_tok_s_b32` | 100 |" in text


def test_bench_compare_puts_ablation_runs_side_by_side_in_the_readme(tmp_path, capsys):
    def run(figures, targets):
        return {"system": "planner-keywords", "figures": figures, "targets": targets}

    met = {"delta_nll_shuffle": {"goal": "≥ 1", "met": True}}
    runs = {"planner-keywords": run({"delta_nll_shuffle": 1.048, "win_proposer": 0.9}, met),
            "planner-keywords-st": run({"delta_nll_shuffle": 0.08195}, {})}
    paths = []
    for name, result in runs.items():
        paths.append(str(tmp_path / f"{name}.json"))
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:ablations -->\nold\n<!-- /bench:ablations -->\nrest\n")
    assert main(["bench", "compare", *paths, "--figures", "delta_nll_shuffle,win_proposer",
                 "--block", "ablations", "--update-readme", str(readme)]) == 0
    assert readme.read_text() == (
        "intro\n<!-- bench:ablations -->\n"
        "| figure | `planner-keywords` | `planner-keywords-st` | target |\n|---|---|---|---|\n"
        "| `delta_nll_shuffle` | 1.048 | 0.08195 | ≥ 1 |\n"
        "| `win_proposer` | 0.9 | — |  |\n"
        "<!-- /bench:ablations -->\nrest\n")
    assert main(["bench", "compare", *paths, "--figures", "nll", "--block", "ablations",
                 "--update-readme", str(readme)]) == 2
    assert "figures ['nll'] are in none" in capsys.readouterr().err
    assert main(["bench", "compare", *paths, "--figures", "win_proposer", "--block", "other",
                 "--update-readme", str(readme)]) == 2
    assert "no <!-- bench:other -->" in capsys.readouterr().err


def test_paired_seconds_times_each_pair_back_to_back_and_takes_per_pair_ratios(monkeypatch):
    clock, calls = [0.0], []
    monkeypatch.setattr(genlab.timing.time, "perf_counter", lambda: clock[0])

    def timed(name, seconds):
        def fn():
            calls.append(name)
            clock[0] += seconds.pop(0)
        return fn

    # pair 0 is the warm-up (untimed); then the second side takes 3x, 2x and 5x as long as the first.
    first = timed("first", [9.0, 1.0, 2.0, 1.0])
    second = timed("second", [1.0, 3.0, 4.0, 5.0])
    first_s, second_s, ratio = paired_seconds(first, second, repeats=3)
    assert calls == ["first", "second"] * 4
    assert (first_s, second_s, ratio) == (1.0, 4.0, 3.0)


def test_unigram_perplexity_on_a_hand_made_corpus():
    from genlab.bench.ar import unigram_perplexity

    # add-one counts of ids 0, 1, 2 over [1, 1, 2]: 1, 3, 2 of 6; scored: every position but the first, [1, 2]
    ppl = unigram_perplexity({"input_ids": [[1, 1, 2]]}, {"input_ids": [[0, 1, 2]]}, vocab_size=3)
    assert ppl == pytest.approx(math.sqrt(6))


def test_bench_ar_measures_a_trained_run(tmp_path, small_corpus):
    out = tmp_path / "ar.json"
    code = main(["bench", "ar", "--json", str(out), "--run-dir", str(tmp_path / "run"), "--preset", "nano",
                 "--train-steps", "4", "--repeats", "1", "--data", str(small_corpus)])
    assert code == 0
    figures = json.loads(out.read_text())["figures"]
    assert all(figures[name] > 0 for name in AR_FIGURES)
    assert figures["kv_cache_speedup_b1"] > 0 and figures["unigram_val_ppl"] > 1
    assert json.loads(out.read_text())["targets"]["val_ppl"]["goal"] == f"< {figures['unigram_val_ppl']:g}"
