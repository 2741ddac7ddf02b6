# `make demo` and `make test` create .venv on first use and never reinstall unless pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
CB := $(VENV)/bin/compactbert

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: the local CPU build; any other torch requirement pulls GBs of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	# bench: OpenVINO + NNCF (~60 MB of wheels, ~15 s): CI tests the OpenVINO baselines and backend
	$(PY) -m pip install -q -e '.[test,bench]'
	# WordNet for offline synonym augmentation (Debian's wordnet-base, read with NLTK's reader).
	test -d /usr/share/wordnet || { apt-get update -qq && apt-get install -y -qq wordnet-base; } || echo "warning: wordnet-base not installed; synonym augmentation will be unavailable"
	touch $(STAMP)

# The whole path on the embedded defaults (MiniLM-L6 + Rotten Tomatoes), short schedules: ~10-15 min on 2 cores.
# The bench compares with four of the teacher baselines (all eight: drop --baselines; ~3x longer).
demo: $(STAMP)
	$(CB) finetune --model minilm-l6 --task rt --out $(DEMO_DIR)/teacher --epochs 1 --max-train-samples 4000 --overwrite
	$(CB) compress quickstart --teacher $(DEMO_DIR)/teacher --task rt --out $(DEMO_DIR)/w2-ternary --max-train-samples 4000 --overwrite
	$(CB) export $(DEMO_DIR)/w2-ternary --out $(DEMO_DIR)/w2-ternary-packed
	$(CB) bench $(DEMO_DIR)/w2-ternary-packed --baseline $(DEMO_DIR)/teacher --task rt --threads 2 --n-latency 20 --n-throughput 5 --baselines torch-fp32,ort-int8-fused,ov-int8,runtime
	$(CB) report $(DEMO_DIR)/teacher $(DEMO_DIR)/w2-ternary $(DEMO_DIR)/w2-ternary-packed/bench.json --out $(DEMO_DIR)/report
	@echo "demo done: open $(DEMO_DIR)/report/index.html"

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) runs/demo
