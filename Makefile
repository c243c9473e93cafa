# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   - create the environment if missing, then run the main job
#   make test   - create the environment if missing, then run the test suite
# The environment is .venv (delete it, or touch requirements.txt, to rebuild).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: env demo test test-fast notebooks clean-env

env: $(STAMP)

$(STAMP): requirements.txt requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt -c requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

# The quickstart notebook, headless: restores a bundled photo with the shipped weights and writes
# figures/quickstart.png (executed copy: outputs/notebooks/00_quickstart.ipynb).
demo: $(STAMP)
	@mkdir -p outputs/notebooks
	$(BIN)/papermill --cwd notebooks notebooks/00_quickstart.ipynb outputs/notebooks/00_quickstart.ipynb
	@echo "wrote figures/quickstart.png (and outputs/notebooks/00_quickstart.ipynb)"

# Notebooks run too (nbval --nbval-lax), at smoke scale, writing figures to a temporary folder.
test: $(STAMP)
	OTM_SMOKE=1 OTM_FIGURES=$$(mktemp -d) $(BIN)/python -m pytest

# Execute every notebook headless at student scale into outputs/notebooks (figures -> figures/).
# Paper scale: $(BIN)/papermill notebooks/NN_x.ipynb out.ipynb -f configs/paper/NN_x.yaml
notebooks: $(STAMP)
	@mkdir -p outputs/notebooks
	@for nb in $(NOTEBOOKS); do \
		echo "papermill $$nb"; \
		$(BIN)/papermill --cwd notebooks "$$nb" "outputs/$$nb" || exit 1; \
	done

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean-env:
	rm -rf $(VENV)
