# Two commands do all the set-up on a fresh machine (Python 3.11 required):
#   make demo   - create .venv from the lock file, generate the seed-case data, simulate, report
#   make test   - create .venv from the lock file and run the test suite (what CI runs)
#   make test-fast - the same without the tests marked slow (real Flower processes), for development
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install demo test test-fast bench sweep clean

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (TensorFlow 2.15 / tensorflow-privacy); found " + sys.version.split()[0] + ". Set PYTHON=python3.11.")'
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade "pip>=24,<26"
	$(VENV)/bin/pip install --quiet -r requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedctx simulate $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not slow" $(ARGS)

bench: $(STAMP)
	$(VENV)/bin/fedctx bench $(ARGS)

sweep: $(STAMP)
	$(VENV)/bin/fedctx sweep $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
