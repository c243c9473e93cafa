# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   - create the environment if missing, then run the main job
#   make test   - create the environment if missing, then run the test suite
# The environment is .venv (delete it, or touch requirements.txt, to rebuild).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: env demo test test-fast clean-env

env: $(STAMP)

$(STAMP): requirements.txt requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt -c requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/otm demo --out figures

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean-env:
	rm -rf $(VENV)
