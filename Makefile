# Everything a fresh machine needs: `make demo` and `make test` both start with `make setup`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.loupe-installed

.PHONY: setup demo test bench-quality clean

setup: $(STAMP)

# Re-install only when the project's metadata changes (idempotent).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev,imagenet,genicam]'
	# Browser tests drive Debian's chromium (Playwright cannot download a browser here).
	command -v chromium >/dev/null || (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >/dev/null
	touch $(STAMP)

demo: setup
	$(BIN)/loupe demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

bench-quality: setup
	$(BIN)/python benchmarks/quality.py

clean:
	rm -rf runs .pytest_cache
