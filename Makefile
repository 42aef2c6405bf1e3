# humo: two commands for a newcomer.
#   make run    set up .venv, then run the whole pipeline on the embedded default (dvc repro)
#   make test   set up .venv, then run the test suite
# Both are idempotent: a second call reuses the venv and only re-runs what changed.

VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.humo-installed

# Offline by design: no hub downloads, no telemetry.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_TELEMETRY := false
export PYTHONHASHSEED := 0
# dvc.yaml stages call `humo <command>`: the venv's bin must be on PATH for `dvc repro` (and `humo ablation`).
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup data run test test-slow bench ablation lora-study pretrain clean-venv

setup: $(STAMP)

# torch==2.13.0 is pinned in pyproject.toml: pip takes the CPU build that lies on disk (design.md section 6).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,faces,demo]"
	@# the demo page (humo demo); --no-deps: gradio pins pillow<13, the project runs (and is tested) on pillow 13,
	@# and the page uses no pillow feature that changed; its other requirements are the [demo] extra
	$(BIN)/python -m pip install --quiet --no-deps gradio==6.31.0 gradio_client==2.7.2
	@# the reference SyncNet class for a parity test; --no-deps: its requirements (opencv-contrib, torchvision,
	@# scenedetect) would replace the project's OpenCV and torch, and the test loads one torch-only file
	$(BIN)/python -m pip install --quiet --no-deps syncnet-python==0.2.3
	@touch $(STAMP)

# The raw dataset: SynthTalk is rendered deterministically, so it reproduces the md5 recorded in data.dvc.
data: setup
	$(BIN)/humo synth

run: data
	$(BIN)/dvc repro

test: setup
	$(BIN)/pytest

# The demo's browser test drives Debian's Chromium (playwright cannot download its own here): installed with apt
# where it is missing and possible; the test skips with the reason otherwise.
test-slow: setup
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get install -y -qq chromium >/dev/null 2>&1 || echo "could not install chromium: the demo's browser test will skip"; \
		else echo "chromium is missing and apt-get is not usable here: the demo's browser test will skip"; fi; \
	fi
	$(BIN)/pytest -m slow

# The paper's ablation in miniature (outside the main job; needs `make run` first, about an hour here): every
# trained recipe (full, w/o progressive, w/o focus-by-predicting, full fine-tune) 3 times from the pretrained
# backbone into artifacts/ablation/, every row on 16 held-out identities x 2 seeds, intervals and verdicts in
# reports/ablation/table.md. Stopped, it resumes: finished runs and scored rows are reused.
ablation: run
	$(BIN)/humo ablation

# Stage 2 as a LoRA adapter beside full stage 2 (outside the main job; needs `make run` first): trains it into
# artifacts/lora_study/, evaluates both over 3 seeds, writes reports/lora/table.md.
lora-study: run
	$(BIN)/humo lora-study

bench: setup
	@for script in benchmarks/*.py; do \
		if [ $$script = benchmarks/bench_long_video.py ] && [ ! -d artifacts/train_stage2 ]; then \
			echo "== $$script skipped: it measures the trained model (make run first)"; continue; fi; \
		echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean-venv:
	rm -rf $(VENV)

# The tiny DiT's text -> video backbone (versioned in models/tiny-t2v with its provenance; stage 1 starts from
# it): trains it again on the curated shards, about 15 min here. Commit the new folder to use it.
pretrain: data
	$(BIN)/dvc repro precompute
	$(BIN)/humo pretrain

