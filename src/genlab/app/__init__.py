"""`genlab app`: a Space-style Gradio app over the demo's run directory or Hub repos (issue 16).

One tab per system, each over the models the demo trained (``RUN_DIR/merge``, ``concept``, ``planner``, ``ar``
as the cloud and ``edge``) or the Hub repos given instead:

- **MERGE** — repair (or continue) a text; every round nested under the input with its edits marked (M8), at the
  deletion threshold and fill rule `make demo` chose on the validation split (``bench.json`` beside the run);
- **Concepts** — where the ConceptHead fires, highlighted over the text, and the rate against its target;
- **Planner** — u → the plan → the text the executor writes from the plan alone, the plan decoded as `make demo`'s
  bench decoded it (u's whole words, its chosen ``<eos>`` bias; ``bench.json`` beside the run);
- **Edge/cloud** — speculative decoding streamed live, then each token coloured by who wrote it (accepted edge
  draft / unverified edge draft / cloud token, rejected drafts struck through) with acceptance, cloud calls and
  the speed beside cloud-only decoding of the same prompt.

A tab whose model is missing says so instead of failing. ``--space-dir DIR`` writes ``app.py`` and
``requirements.txt`` for a Hugging Face Space that serves the same app from Hub repos.
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
from transformers import AutoTokenizer

from ..bench.planner import measured_plan_options
from ..spelling import fill_rule
from . import views
from .settings import EXAMPLES, MODELS, AppConfig

CSS = views.CSS


def load_models(config: AppConfig) -> dict[str, tuple | str]:
    """name → (model, tokenizer), plus MERGE's fill rule and the planner's plan options, or the reason it is
    not there."""
    loaded = {}
    for name, (_, auto_class) in MODELS.items():
        where = config.location(name)
        if getattr(config, name) is None and not Path(where).is_dir():  # a Hub repo only when given
            loaded[name] = f"no {name} model at {where}: run `make demo` or pass --{name} RUN_DIR_OR_REPO"
            continue
        try:
            model = auto_class.from_pretrained(where, trust_remote_code=True).eval()
            loaded[name] = (model, AutoTokenizer.from_pretrained(where, trust_remote_code=True))
            if name == "merge":
                loaded[name] += (use_chosen_settings(*loaded[name], where),)
            if name == "planner":
                loaded[name] += (chosen_plan_options(where),)
        except Exception as error:  # shown in the tab: the other systems stay usable
            loaded[name] = f"could not load {name} from {where}: {type(error).__name__}: {error}"
    return loaded


def use_chosen_settings(model, tokenizer, where: str):
    """Give a MERGE run the detector, deletion threshold, round cap and fill rule the demo's bench chose on the
    validation split (its ``bench.json``, issue 12) → the fill rule's ``generate`` keywords (``{}``: free fill). A
    Hub repo or a run without the file keeps its saved settings and fills freely."""
    bench = demo_bench(where)
    if bench is None:
        return {}
    model.config.delete_threshold = bench["figures"]["delete_threshold"]
    model.generation_config.detector = bench["config"]["detector"]
    model.generation_config.max_rounds = bench["config"].get("rounds", model.generation_config.max_rounds)
    return fill_rule(tokenizer, bench["config"]["fill"], bench["config"].get("lexicon_weight"))


def chosen_plan_options(where: str) -> dict:
    """``model.plan`` options of the decoding the demo's bench measured (its ``bench.json``, issue 14): plans of
    u's whole words when it planned them, and the ``<eos>`` bias it chose on tuning pairs. A Hub repo or a run
    without the file plans greedily: ``{}``."""
    bench = demo_bench(where)
    return {} if bench is None else measured_plan_options(bench)


def demo_bench(where: str) -> dict | None:
    """The benchmark JSON `make demo` wrote beside a run (``bench.json``); ``None`` for a Hub repo or without it."""
    path = Path(where) / "bench.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _missing(loaded: dict, *names: str) -> str | None:
    problems = [loaded[n] for n in names if isinstance(loaded[n], str)]
    return "<p class='genlab-missing'>" + "<br>".join(problems) + "</p>" if problems else None


def _tab(name: str, title: str, label: str, action, loaded: dict, needs: tuple[str, ...], outputs: int = 1):
    """One tab: a textbox, a button, the HTML result (and a stats line when ``outputs`` is 2)."""
    with gr.Tab(title, id=name):
        missing = _missing(loaded, *needs)
        if missing:
            gr.HTML(missing, elem_id=f"{name}-missing")
            return
        text = gr.Textbox(value=EXAMPLES[name], label=label, elem_id=f"{name}-input")
        button = gr.Button("Run", variant="primary", elem_id=f"{name}-run")
        results = [gr.HTML(elem_id=f"{name}-output")] + [gr.Markdown(elem_id=f"{name}-stats")] * (outputs - 1)
        button.click(action, inputs=text, outputs=results)


def build_app(loaded: dict) -> gr.Blocks:
    """The Blocks app over ``load_models``'s result."""
    def merge(text):
        return views.merge_view(*loaded["merge"], text, mode="edit")

    def concept(text):
        return views.concept_view(*loaded["concept"], text)

    def planner(text):
        return views.planner_view(*loaded["planner"], text)

    def edge_cloud(text):
        (cloud, tokenizer), (edge, _) = loaded["cloud"], loaded["edge"]
        yield from views.edge_cloud_stream(cloud, edge, tokenizer, text)

    with gr.Blocks(title="genlab") as app:
        gr.Markdown("# genlab\nFour research generation systems, HuggingFace-native: MERGE, online concept "
                    "compression, a concept-first planner–executor, edge/cloud speculative decoding.")
        with gr.Tabs():
            _tab("merge", "MERGE edit", "text to repair", merge, loaded, ("merge",))
            _tab("concept", "Concepts", "text", concept, loaded, ("concept",))
            _tab("planner", "Planner", "keywords u (、-separated)", planner, loaded, ("planner",))
            _tab("edge", "Edge/cloud", "prompt", edge_cloud, loaded, ("cloud", "edge"), outputs=2)
    return app


SPACE_APP = '''"""A Hugging Face Space serving genlab's app (written by `genlab app --space-dir`)."""

from genlab.app import CSS, AppConfig, build_app, load_models

config = AppConfig(merge={merge!r}, concept={concept!r}, planner={planner!r}, cloud={cloud!r}, edge={edge!r})
build_app(load_models(config)).launch(server_name="0.0.0.0", css=CSS)
'''


def write_space(config: AppConfig) -> Path:
    """``app.py`` and ``requirements.txt`` for a Space over the configured models (Hub repo ids)."""
    folder = Path(config.space_dir)
    folder.mkdir(parents=True, exist_ok=True)
    locations = {name: config.location(name) for name in MODELS}
    (folder / "app.py").write_text(SPACE_APP.format(**locations), encoding="utf-8")
    (folder / "requirements.txt").write_text(f"{config.genlab_requirement}\ngradio>=6\n", encoding="utf-8")
    return folder


def run(config: AppConfig):
    """`genlab app`: write the Space files, or serve the app until interrupted."""
    if config.space_dir:
        folder = write_space(config)
        print(f"[genlab app] wrote {folder / 'app.py'} and {folder / 'requirements.txt'}")
        return folder
    app = build_app(load_models(config))
    app.launch(server_name=config.host, server_port=config.port, css=CSS)
    return app
