# make demo: set up and run the main job.   make test: set up and run the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.aigi-installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[all,test,demo]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/aigi demo -o demo_out

test: $(STAMP)
	$(VENV)/bin/ruff check aigi common cache extractors fakes heads pipeline tests benchmarks
	$(PY) -m pytest -q -ra -n auto --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check aigi common cache extractors fakes heads pipeline tests benchmarks

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf demo_out .pytest_cache
