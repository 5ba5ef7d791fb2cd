VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: up test bench fuzz lint clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)
	$(VENV)/bin/whplane up

# Tests mostly wait (processes starting, polling): more workers than cores pays on a 2-core
# machine. One file's tests run on one worker, so a module-scoped fleet or stack is built once.
# TEST_WORKERS=0 runs the suite in this process, one test after the other.
TEST_WORKERS ?= 3

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	@command -v wrk >/dev/null || { echo "installing wrk (load generator)"; \
		(apt-get install -y wrk || (apt-get update && apt-get install -y wrk)) >/dev/null; }
	$(PY) -m bench

# The fuzz targets of the suite (tests/fuzz) with 10,000 cases each (WH_FUZZ_EXAMPLES=N to
# change), a random seed, and the case counts and timings at the end.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:cacheprovider --timeout=0 \
		--hypothesis-show-statistics tests/fuzz

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy providers data_plane control_plane cli

clean:
	rm -rf $(VENV) build *.egg-info
