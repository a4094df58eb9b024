# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned first: this CPU build installs from local disk in seconds; unpinned, pip may pick a multi-GB CUDA build.
TORCH ?= torch==2.13.0

$(BIN)/fairgen: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,faces,diffusers]'
	touch $@

.PHONY: install demo test bench browser clean
install: $(BIN)/fairgen

demo: install
	$(BIN)/fairgen audit --suite occupations:test --images-per-prompt 32 --seed 0 --out runs/demo

# Two workers (pytest-xdist), one per core of a 2-core CI machine; --dist loadfile keeps each test file,
# and the model its fixtures train once, on one worker.
test: install browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The report test screenshots report.html in headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "warning: chromium could not be installed; the report screenshot test will be skipped"

bench: install
	$(BIN)/python benchmarks/metrics.py

clean:
	rm -rf $(VENV) runs
