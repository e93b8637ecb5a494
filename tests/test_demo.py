"""`genlab demo` (SPEC H8; issue 7): bad input, corrupted checkpoints, reuse, and the demo end to end.

Bad input, the corruption/reuse rules, one real stage in detail (the AR baseline trained for a second,
benchmarked, carded), and the whole demo with every system on nano models (~1 min on an idle 2-core machine).
"""

import json
import re
import struct
from dataclasses import asdict
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from genlab import demo
from genlab.demo import reuse, settings, stages
from genlab.demo.settings import SCALES
from genlab.cli import _config, build_parser, main
from genlab.runs import RunDir, read_manifest, write_manifest


# -- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", ["0", "-5"])
def test_budget_must_be_positive(budget, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--budget", budget])
    assert exit_info.value.code == 2
    assert "--budget: must be > 0" in capsys.readouterr().err


def test_unwritable_run_dir_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["demo", "--run-dir", str(blocker / "demo"), "--preset", "nano"]) == 2
    err = capsys.readouterr().err
    assert "genlab: error:" in err and "is not writable" in err and str(blocker / "demo") in err


def test_a_run_dir_made_with_another_preset_is_refused_before_any_training(tmp_path, capsys):
    root = tmp_path / "demo"
    root.mkdir()
    (root / "demo_scale.json").write_text(json.dumps({"preset": "nano", **asdict(SCALES["nano"])}), encoding="utf-8")
    assert main(["demo", "--run-dir", str(root)]) == 2  # tiny: its runs would be reused as tiny ones
    err = capsys.readouterr().err
    assert "holds a demo made with --preset nano" in err and "ar_steps" in err
    assert sorted(p.name for p in root.iterdir()) == ["demo_scale.json"]  # nothing trained


def test_the_demo_planner_recipe_is_the_makefiles():
    """stages.KEYWORDS_RECIPE / PLAN_EOS_BIASES mirror `make bench-planner`'s KEYWORDS_RECIPE flags: parsed by the
    CLI, the Makefile's flags give the same settings."""
    makefile = (Path(__file__).parents[1] / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    flags = re.search(r"^KEYWORDS_RECIPE = (.*)$", makefile, re.M).group(1).split()
    config = _config(build_parser().parse_args(["bench", "planner-keywords", *flags]))
    assert {k: getattr(config, k) for k in stages.KEYWORDS_RECIPE} == stages.KEYWORDS_RECIPE
    assert [float(b) for b in config.plan_eos_biases] == stages.PLAN_EOS_BIASES and config.plan_input_words


def test_unknown_preset_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


# -- corrupted checkpoints, reuse ---------------------------------------------------------------------------------
def _demo(root: Path) -> settings.Demo:
    return settings.Demo(root=root, budget=1.0, scale=settings.SCALES["nano"], preset="nano")


def _save_nano_run(run_dir: Path, seed: int) -> None:
    from genlab.tokenization import default_tokenizer
    from genlab.trainers.ar import build_model

    tokenizer = default_tokenizer()
    build_model("nano", tokenizer, seed).save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)
    write_manifest(run_dir, {"system": "ar", "seed": seed})


def test_corrupted_checkpoint_is_reported_deleted_and_retrained(tmp_path, capsys):
    run_dir = tmp_path / "ar"
    _save_nano_run(run_dir, seed=0)
    weights = run_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted copy
    stale = run_dir / "stale-file"
    stale.write_text("left by the earlier run")
    calls = []

    def train(callbacks):
        calls.append(1)
        _save_nano_run(run_dir, seed=1)
        return RunDir.read(run_dir)

    manifest = reuse.ensure_run("AR baseline", run_dir, reuse.load_causal_lm, train, _demo(tmp_path), steps=1)
    out = capsys.readouterr().out
    assert "CORRUPTED checkpoint" in out and str(run_dir) in out and "retraining" in out
    assert calls == [1] and manifest["seed"] == 1
    assert not stale.exists()  # the corrupted run was deleted, not resumed
    reuse.load_causal_lm(run_dir)  # the retrained files load


def test_flipped_bytes_that_still_load_are_caught_by_the_checksums(tmp_path, capsys):
    from genlab.prepare import reuse_or_train
    from genlab.runs import export_model_run
    from genlab.tokenization import default_tokenizer
    from genlab.trainers.ar import build_model

    run_dir = tmp_path / "ar"
    tokenizer = default_tokenizer()
    manifest = {"system": "ar", "seed": 0}
    export_model_run(run_dir, build_model("nano", tokenizer, 0), tokenizer, manifest)
    assert set(read_manifest(run_dir)["checksums"]) == {"model.safetensors"}
    assert reuse.load_error(run_dir, reuse.load_causal_lm) is None
    weights = run_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(255 - b for b in data[-8:])  # flip the last weights' bytes: the file still loads
    weights.write_bytes(bytes(data))
    reuse.load_causal_lm(run_dir)
    assert "model.safetensors no longer match the checksums" in reuse.load_error(run_dir, reuse.load_causal_lm)
    with pytest.raises(ValueError, match="changed since export"):  # a benchmark never measures it again
        reuse_or_train(run_dir, lambda: pytest.fail("not retrained silently"))


def test_complete_run_that_loads_is_reused_not_retrained(tmp_path, capsys):
    run_dir = tmp_path / "ar"
    _save_nano_run(run_dir, seed=3)
    manifest = reuse.ensure_run("AR baseline", run_dir, reuse.load_causal_lm,
                               lambda callbacks: pytest.fail("a complete, loadable run must not be retrained"),
                               _demo(tmp_path), steps=1)
    assert manifest["seed"] == 3 and "reusing the complete run" in capsys.readouterr().out


def test_run_that_does_not_load_after_training_is_an_error(tmp_path):
    run_dir = tmp_path / "ar"

    def broken_train(callbacks):
        run_dir.mkdir()
        write_manifest(run_dir, {"system": "ar"})  # a manifest but no model files
        return RunDir.read(run_dir)

    with pytest.raises(RuntimeError, match="does not load"):
        reuse.ensure_run("AR baseline", run_dir, reuse.load_causal_lm, broken_train, _demo(tmp_path), steps=1)


def test_a_run_the_safety_cap_cut_short_is_announced_and_listed(tmp_path, capsys):
    run_dir = tmp_path / "ar"

    def capped_train(callbacks):
        _save_nano_run(run_dir, seed=0)
        write_manifest(run_dir, {"system": "ar", "steps": 7})  # the cap stopped it at step 7 of 20
        return RunDir.read(run_dir)

    stage = _demo(tmp_path)
    reuse.ensure_run("AR baseline", run_dir, reuse.load_causal_lm, capped_train, stage, steps=20)
    assert stage.cut_short == [f"AR baseline: trained 7 of 20 steps (the --budget safety cap of {stage.budget:g} s "
                               "stopped it); results not representative"]
    assert stage.cut_short[0] in capsys.readouterr().out


def test_measurements_are_reused_until_a_model_changes(tmp_path):
    run_dir = tmp_path / "ar"
    run_dir.mkdir()
    write_manifest(run_dir, {"system": "ar", "steps": 1})
    path = run_dir / "demo.json"
    counter = iter(range(10))
    first = reuse.cached(path, [run_dir], "nano", lambda: {"n": next(counter)})
    assert reuse.cached(path, [run_dir], "nano", lambda: {"n": next(counter)})["n"] == first["n"] == 0
    assert reuse.cached(path, [run_dir], "tiny", lambda: {"n": next(counter)})["n"] == 1  # other preset
    write_manifest(run_dir, {"system": "ar", "steps": 2})  # retrained
    assert reuse.cached(path, [run_dir], "tiny", lambda: {"n": next(counter)})["n"] == 2


# -- one real stage in the default run -------------------------------------------------------------------------------
def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _assert_card_reads_bench(run_dir: Path) -> None:
    """The card's model-index values are exactly the figures of the run's bench.json (H5: read, not typed)."""
    figures = json.loads((run_dir / "bench.json").read_text())["figures"]
    card = ModelCard.load(run_dir / "README.md")
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results == pytest.approx(figures)


def test_ar_stage_trains_measures_and_cards_with_measured_numbers(tmp_path):
    from genlab.hub_cards import write_card
    from genlab.report import section_ar

    stage = _demo(tmp_path)
    with stage.console.stage("ar", tmp_path / "ar.log", stage.scale.ar_steps):
        result = stages.stage_ar(stage)
    figures = result["figures"]
    assert result["manifest"]["steps"] >= 1 and figures["gen_tok_s_b1"] > 0 and figures["val_ppl"] > 1
    assert reuse.training_log(tmp_path / "ar"), "the Trainer's log history feeds the training curve"
    write_card(tmp_path / "ar")
    _assert_card_reads_bench(tmp_path / "ar")
    text = "\n".join(section_ar(result))
    assert f"{figures['val_ppl']:.2f}" in text and f"{figures['gen_tok_s_b1']:.1f} tok/s" in text
    with stage.console.stage("ar", tmp_path / "ar.log", stage.scale.ar_steps):
        again = stages.stage_ar(stage)  # reused run and measurements: identical numbers, nothing retrained
    assert again["figures"] == figures and again["manifest"] == result["manifest"]


# Whether a character has a glyph: Chromium draws every missing one as the same .notdef box, so a CJK character
# inked like a private-use code point (which no font has) is "tofu".
INK_JS = """
const ink = (ch) => { const c = document.createElement('canvas'); c.width = c.height = 48;
  const x = c.getContext('2d'); x.font = '40px ' + getComputedStyle(document.body).fontFamily;
  x.fillText(ch, 4, 40); return c.toDataURL(); };
return [ink('中'), ink('文'), ink('\\uE000')];
"""


def _assert_report_reads_in_a_browser(browser, html_path: Path, screenshot: Path) -> None:
    """The report as a reader sees it in headless Chromium: Chinese drawn with real glyphs, nothing wider than
    the window, every plot loaded, the verdicts first; the screenshot is a real PNG."""
    browser.get(html_path.as_uri())
    zhong, wen, missing = browser.execute_script(INK_JS)
    assert zhong != missing and zhong != wen, "Chinese renders as empty boxes: no CJK font reached the page"
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    assert browser.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0 && "
                                  "i.getBoundingClientRect().right <= window.innerWidth)")
    assert browser.execute_script("return document.querySelector('h2').textContent") == "Verdicts"
    assert browser.save_screenshot(str(screenshot)) and min(_png_size(screenshot)) > 500


# -- the whole demo ---------------------------------------------------------------------------------------------------
def test_demo_end_to_end_report_plots_cards_push_and_corrupted_rerun(tmp_path, hub_server, capsys, browser):
    root = tmp_path / "demo"
    assert main(["demo", "--run-dir", str(root), "--quick", "--push", "demo-user/genlab",
                 "--endpoint", hub_server.endpoint]) == 0
    out = capsys.readouterr().out
    # a quiet terminal: the Trainer's logs and the benchmarks' figure lines go to the stage logs
    assert "'train_runtime'" not in out and "gen_tok_s_b1: " not in out
    assert "'train_runtime'" in (root / "ar.log").read_text(encoding="utf-8")
    assert "gen_tok_s_b1: " in (root / "ar.log").read_text(encoding="utf-8")
    report = (root / "report.md").read_text(encoding="utf-8")
    raw = json.loads((root / "report.json").read_text(encoding="utf-8"))["results"]
    for title in ("Autoregressive baseline", "MERGE", "concept compression", "Planner–executor", "speculative decoding"):
        assert title in report
    # measured numbers appear as measured
    merge, spec = raw["merge"]["figures"], raw["speculative"]["figures"]
    assert f"{merge['sighan15_correction_f1']:.3f}" in report and f"{merge['speedup_b1']:.2f}×" in report
    assert f"{raw['concept']['figures']['compression_ratio']:.3f}" in report
    assert f"{raw['planner']['figures']['delta_nll_shuffle']:+.3f}" in report
    # the planner is `make bench-planner`'s keywords recipe, its plans decoded as that bench decodes them
    planner_config = json.loads((root / "planner" / "config.json").read_text(encoding="utf-8"))
    assert all(planner_config[k] for k in ("executor_copy", "planner_copy", "executor_checklist", "plan_separator_id"))
    assert raw["planner"]["figures"]["plan_eos_bias"] in (0, -1, -2, -4, -8, -16, -32)
    planner_bench = json.loads((root / "planner" / "bench.json").read_text(encoding="utf-8"))["config"]
    assert planner_bench["eval_pairs"] == min(8, planner_bench["validation_pairs"])  # evaluated, not the split
    assert f"at NLL {raw['planner']['figures']['nll_u_plan']:.3f}" in report  # the planner-free plan beside it
    assert f"{spec['lossless_speedup_vs_cloud']:.2f}×" in report
    assert {r["arm"] for r in raw["speculative"]["rates"]} == {"with CJK processors", "without processors"}
    assert all(row["steps"] for row in raw["merge"]["repairs"]), "every repair has its round trace"
    # plots exist, are PNGs and are embedded in both renderings
    html = (root / "report.html").read_text(encoding="utf-8")
    for name in ("training_curves", "speed_vs_ar", "merge_rounds", "planner_monitors"):
        assert min(_png_size(root / "plots" / f"{name}.png")) > 100
        assert f"plots/{name}.png" in report and f'src="plots/{name}.png"' in html
    assert "<table>" in html and "<html lang='zh-CN'>" in html and "Noto Sans CJK SC" in html
    assert re.search(r"<li>reference .*?<ul>\s*<li>round 1 \(gate", html, re.S)  # each repair's rounds nest under it
    _assert_report_reads_in_a_browser(browser, root / "report.html", tmp_path / "report.png")
    # a verdict per system at the top of the report and at the end of the terminal output
    assert report.index("## Verdicts") < report.index("Autoregressive baseline")
    verdicts = out[out.rindex("## Verdicts"):]
    assert all(f"| {system} |" in verdicts for system in ("ar", "merge", "concept", "planner", "speculative"))
    # a card per model, its numbers read from the measurements; pushed to the hub; load commands printed
    for name, (folder, auto_class, remote) in demo.MODELS.items():
        _assert_card_reads_bench(root / folder)
        assert f"{auto_class}.from_pretrained({str(root / folder)!r}" in out
        assert f"demo-user/genlab-{name}" in out
    assert re.search(r"AutoModel\.from_pretrained\('[^']*merge', trust_remote_code=True\)", out)

    # an earlier run left a corrupted MERGE checkpoint: detected, reported, retrained; the rest is reused
    weights = root / "merge" / "model.safetensors"
    weights.write_bytes(b"\0" * 64)
    assert main(["demo", "--run-dir", str(root), "--quick"]) == 0
    out = capsys.readouterr().out
    assert f"CORRUPTED checkpoint in {root / 'merge'}" in out
    for reused in ("ar", "concept", "planner", "planner-ar", "edge"):
        assert f"reusing the complete run in {root / reused}\n" in out, reused
    assert f"reusing the complete run in {root / 'merge'}\n" not in out
    from genlab.modeling_merge import MergeForMaskedRefinement

    MergeForMaskedRefinement.from_pretrained(root / "merge")
