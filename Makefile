# Two commands do everything on a fresh machine (each creates .venv when missing):
#   make run    meta-train and evaluate on MovieLens-100K, print the cold-start table
#   make test   lint + the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint baselines bench clean

$(STAMP): requirements.txt requirements-tfds.txt requirements-test.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-test.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m transfer_meta.main --config=configs/melu_ml100k.py --workdir=runs/melu_ml100k

baselines: $(STAMP)
	$(BIN)/python -m experiments.baselines --seeds=5

lint: $(STAMP)
	$(BIN)/ruff check transfer_meta tests experiments configs

test: $(STAMP) lint
	XLA_FLAGS="$(XLA_FLAGS)" $(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs
