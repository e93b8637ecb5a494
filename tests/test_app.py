"""`genlab app` (issue 16): the Space-style Gradio app over a run directory, driven end to end in headless
Chromium — every tab run as a user would, its result read back from the page."""

import json
import shutil
import socket

import pytest
import torch

from genlab.app import build_app, load_models, views
from genlab.app.settings import AppConfig
from genlab.cli import main
from genlab.configuration_planner import NUM_CONCEPT_SPECIALS
from genlab.spelling import LexiconFillProcessor

COMMON = ["--max-steps", "2", "--batch-size", "4", "--report-to", "none", "--save-steps", "2", "--logging-steps", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, small_corpus):
    """Every model the app serves, trained 2 steps on real text, laid out as the demo lays them out."""
    root = tmp_path_factory.mktemp("app_runs")
    sentences = [s for s in small_corpus.read_text(encoding="utf-8").splitlines() if 6 <= len(s) <= 30][:200]
    pairs = root / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"u": "、".join([s[:2], s[2:4]]), "y": s}, ensure_ascii=False)
                               for s in sentences), encoding="utf-8")
    data = ["--data", str(small_corpus)]
    for command in (["train", "ar", "--preset", "nano", "--block-size", "32", "--eval-blocks", "4", *data],
                    ["train", "merge", "--preset", "nano", *data],
                    ["train", "concept", "--base", str(root / "ar"), "--block-size", "32", "--eval-blocks", "4",
                     "--concept-vocab", "64", *data],
                    ["train", "planner", "--pairs", str(pairs), "--proposer", "keywords", "--hidden-size", "32",
                     "--planner-layers", "1", "--executor-layers", "1", "--warmup-estep", "1", "--estep-top-k", "2",
                     "--plan-words"],
                    ["train", "edge", "--cloud", str(root / "ar"), "--num-layers", "1", "--cloud-continuations", "0",
                     "--block-size", "32", *data]):
        folder = {"ar": "ar", "merge": "merge", "concept": "concept", "planner": "planner", "edge": "edge"}[command[1]]
        assert main([*command, "--run-dir", str(root / folder), *COMMON]) == 0, command
    return root


@pytest.fixture(scope="module")
def app_url(run_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(load_models(AppConfig(run_dir=str(run_dir))))
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, css=views.CSS)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def _run_tab(browser, title: str, name: str, text: str, wait_for: str):
    """Open the tab, type ``text``, press Run, wait until ``wait_for`` (a CSS selector) appears; its element."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120)
    tab = wait.until(ready.element_to_be_clickable((By.XPATH, f"//button[@role='tab'][contains(., '{title}')]")))
    tab.click()
    box = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, f"#{name}-input textarea")))
    box.clear()
    box.send_keys(text)
    browser.find_element(By.CSS_SELECTOR, f"#{name}-run").click()
    return wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, wait_for)))


def test_every_tab_works_in_a_real_browser(browser, app_url):
    from selenium.webdriver.common.by import By

    browser.get(app_url)
    final = _run_tab(browser, "MERGE", "merge", "今天天汽很好。", "#merge-final")
    rounds = browser.find_elements(By.CSS_SELECTOR, "#merge-trace li")
    assert rounds and "round 1: gate" in rounds[0].text and final.text  # the trace, nested, then the output

    rate = _run_tab(browser, "Concepts", "concept", "新华社北京一月一日电。", "#concept-text .meta")
    assert "per token (target 0.25)" in rate.text
    marked = browser.find_elements(By.CSS_SELECTOR, "#concept-text mark.concept")
    assert len(marked) == int(rate.text.split()[0])  # every counted concept is highlighted

    plan = _run_tab(browser, "Planner", "planner", "经济、发展", "#planner-plan")
    assert plan.text.startswith("keywords:")

    _run_tab(browser, "Edge/cloud", "edge", "新华社北京", "#edge-text .meta")  # the final, coloured result
    stats = browser.find_element(By.CSS_SELECTOR, "#edge-stats").text
    assert "speed-up" in stats and "acceptance" in stats and "cloud calls" in stats
    coloured = browser.find_elements(By.CSS_SELECTOR, "#edge-text .accepted, #edge-text .cloud, #edge-text .unverified")
    assert coloured, "every new token is coloured by who wrote it"


def test_a_missing_model_is_named_in_its_tab_and_the_others_load(tmp_path, run_dir):
    (tmp_path / "merge").symlink_to(run_dir / "merge", target_is_directory=True)
    loaded = load_models(AppConfig(run_dir=str(tmp_path)))
    assert isinstance(loaded["merge"], tuple)
    assert loaded["planner"].startswith(f"no planner model at {tmp_path / 'planner'}")
    build_app(loaded)  # builds with the missing tabs explained


def test_the_merge_tab_repairs_with_the_threshold_and_fill_the_demo_chose(tmp_path, run_dir):
    shutil.copytree(run_dir / "merge", tmp_path / "merge")
    plain = load_models(AppConfig(run_dir=str(tmp_path)))["merge"]
    assert plain[2] == {} and plain[0].config.delete_threshold == 0.5  # no bench.json: as saved, free fill
    (tmp_path / "merge" / "bench.json").write_text(json.dumps(
        {"figures": {"delete_threshold": 0.7}, "config": {"detector": "fill", "fill": "confusion", "rounds": 2}}),
        encoding="utf-8")
    model, tokenizer, fill = load_models(AppConfig(run_dir=str(tmp_path)))["merge"]
    assert model.config.delete_threshold == 0.7 and model.generation_config.detector == "fill"
    assert model.generation_config.max_rounds == 2 and plain[0].generation_config.max_rounds != 2
    assert fill["fill_candidates"].dtype == torch.bool and fill["fill_candidates"].shape == (len(tokenizer),) * 2
    assert "deletion threshold 0.7, confusion-set fill" in views.merge_view(model, tokenizer, fill, "天汽好")
    (tmp_path / "merge" / "bench.json").write_text(json.dumps(
        {"figures": {"delete_threshold": 0.9975}, "config": {"detector": "fill", "fill": "lexicon"}}), encoding="utf-8")
    model, tokenizer, fill = load_models(AppConfig(run_dir=str(tmp_path)))["merge"]
    assert isinstance(fill["fill_processor"], LexiconFillProcessor)
    shown = views.merge_view(model, tokenizer, fill, "天汽好")
    assert "deletion threshold 0.9975, word-list + confusion-set fill" in shown


def test_the_planner_tab_plans_as_the_demo_bench_did(tmp_path, run_dir):
    shutil.copytree(run_dir / "planner", tmp_path / "planner")
    assert load_models(AppConfig(run_dir=str(tmp_path)))["planner"][2] == {}  # no bench.json: the greedy plan
    (tmp_path / "planner" / "bench.json").write_text(json.dumps(
        {"figures": {"plan_eos_bias": -32.0}, "config": {"plan_input_words": True}}), encoding="utf-8")
    model, tokenizer, options = load_models(AppConfig(run_dir=str(tmp_path)))["planner"]
    assert options["input_words"] and options["logits_processor"] is not None
    u = tokenizer(["经济、发展"], add_special_tokens=False, return_tensors="pt")
    plan = model.plan(u["input_ids"], u["attention_mask"], **options)[0, 0]  # (concepts,) the keywords type
    named = plan[plan >= NUM_CONCEPT_SPECIALS] - NUM_CONCEPT_SPECIALS
    assert set(named.tolist()) == set(u["input_ids"][0].tolist())  # every word of u, and nothing else
    view = views.planner_view(model, tokenizer, options, "经济、发展")
    assert "经 济" in view and "发 展" in view  # the view plans the same way


def test_space_files_serve_the_given_hub_repos(tmp_path):
    assert main(["app", "--space-dir", str(tmp_path / "space"), "--merge", "me/genlab-merge", "--cloud", "me/ar",
                 "--genlab-requirement", "genlab @ git+https://example.org/genlab"]) == 0
    app_py = (tmp_path / "space" / "app.py").read_text(encoding="utf-8")
    assert "merge='me/genlab-merge'" in app_py and "cloud='me/ar'" in app_py
    compile(app_py, "app.py", "exec")
    assert (tmp_path / "space" / "requirements.txt").read_text().splitlines()[0] == "genlab @ git+https://example.org/genlab"


def test_diff_marks_what_a_round_changed():
    assert views.diff_html("天汽好", "天气好") == "天<del>汽</del><ins>气</ins>好"
    assert views.diff_html("<a>", "<a>b") == "&lt;a&gt;<ins>b</ins>"
