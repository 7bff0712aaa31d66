# Fresh machine, two commands:  `make demo`  and  `make test`.
# torch is pinned so pip takes the local CPU wheel instead of the multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: setup demo test lint docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"

setup: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]" "$(TORCH)"

demo: setup
	$(BIN)/python examples/digits.py

lint: setup
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks
	$(BIN)/mypy

# The site goes to site/ (git-ignored); --strict fails on broken links, anchors and docstrings.
# NO_MKDOCS_2_WARNING silences Material's banner about MkDocs 2.0 (mkdocs stays < 2 here).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

test: lint docs
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) runs site .pytest_cache .mypy_cache .ruff_cache
