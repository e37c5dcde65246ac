# Every target builds its own virtual environment from the pinned lock file.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast demo serve bench dst clean prometheus-tools

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP) prometheus-tools
	$(BIN)/python -m pytest -q tests

# The alert-rule, exposition and dashboard tests run Prometheus's promtool, and one
# end-to-end test a Prometheus server (deploy/): both come with Debian's `prometheus`
# package, installed here when missing and we are root, as .ci/run does.
prometheus-tools:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing promtool and prometheus (apt-get install prometheus)"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	    else \
	        echo "make test needs promtool and prometheus (Prometheus 2.x) on PATH: as root, apt-get install prometheus" >&2; \
	        exit 1; \
	    fi; \
	fi

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -x tests/unit

demo: $(STAMP)
	$(BIN)/python -m orchestrator demo

# The provider simulator on :9000 and the orchestrator on :8080, both stopped by Ctrl-C.
serve: $(STAMP)
	@$(BIN)/python -m orchestrator simulate --config config/simulator.example.yaml --port 9000 & \
	sim=$$!; trap 'kill $$sim 2>/dev/null' EXIT INT TERM; \
	$(BIN)/python -m orchestrator serve --config config/orchestrator.example.yaml

# The deterministic simulation (SPEC 7, 18): make dst SEEDS=100000. A failing seed
# prints the command that replays it; make test runs 4,000.
SEEDS ?= 10000
dst: $(STAMP)
	$(BIN)/python tests/dst/run.py --seeds $(SEEDS)

# make bench BENCH_ARGS="--results bench/results/run1" (python -m bench --help for the rest)
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache
