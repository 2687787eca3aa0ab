# Entry points: `make demo` (label the demo corpus on a local Ray), `make test` (everything, as CI
# runs it) and `make test-fast` (the edit loop: skips tests marked `slow`).
# Both create .venv and install the project on first use; later runs reuse it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
DEMO_OUT ?= demo-out

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

demo: setup
	$(BIN)/python jobs/demo.py --out $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest -q --durations=15

# Skips `slow`: Ray kill/resume, cluster and object-store tests, the wheel install.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" --durations=10

bench: setup
	$(BIN)/pseudolabel bench --json bench.json

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
