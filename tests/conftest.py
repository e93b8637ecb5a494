"""Shared pytest fixtures. Keep each fixture small and documented; add new ones below, grouped by topic."""

import os

import pytest

from genlab.hub_server import LocalHubServer


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers) each worker takes its share of the cores for torch: two
    workers of two threads each on a 2-core machine spent their time waiting on each other's threads (the suite
    was no faster than one process, and some tests 3× slower)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


# -- Hub (SPEC H4) -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def hub_server():
    """A Hub-compatible server on 127.0.0.1 for the whole session; ``hub_server.endpoint`` is its URL.

    Tests share it, so each should push to its own repo id.
    """
    with LocalHubServer() as server:
        yield server


# -- Data ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """2 000 real corpus sentences (from every split) as a user .txt file: fast to pack, still real text."""
    from genlab.data import load_corpus

    corpus = load_corpus("all")
    texts = [text for split, n in (("train", 1800), ("validation", 100), ("test", 100))
             for text in corpus[split].shuffle(seed=0).select(range(n))["text"]]
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text("\n".join(texts), encoding="utf-8")
    return path


# -- Models -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_qwen2_base(tmp_path_factory):
    """A random 4-layer Qwen2 saved with the corpus tokenizer: the base of concept-compression runs."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from genlab.tokenization import default_tokenizer

    path = tmp_path_factory.mktemp("tiny_qwen2_base")
    tokenizer = default_tokenizer()
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=4, hidden_size=64, intermediate_size=128,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
                                        tie_word_embeddings=True, max_position_embeddings=256))
    base.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# -- Browser (issue 16: the app and the report are checked in a real browser) -------------------------------------
@pytest.fixture(scope="session")
def browser():
    """Headless Chromium driven by Debian's chromedriver (installed by the Makefile), fully offline."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 "--lang=zh-CN"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    yield driver
    driver.quit()
