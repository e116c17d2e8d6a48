# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The pure core: no torch, asyncio, sockets or zeroconf (tests/test_purity.py checks).
PURE := edgeci_p2p/core edgeci_p2p/wire edgeci_p2p/auction edgeci_p2p/planners edgeci_p2p/policy edgeci_p2p/scenarios edgeci_p2p/stream/stats.py
# mypy --strict runs over the pure core and the asyncio shell.
TYPED := $(PURE) edgeci_p2p/aio

.PHONY: demo dashboard test lint typecheck pytest bench clean mutation

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m edgeci_p2p.demo

# The demo's three peers kept up, the first with its dashboard (the address is printed).
dashboard: $(VENV)/.installed
	$(PY) -m edgeci_p2p.demo --dashboard

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check edgeci_p2p tests benchmarks examples

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy $(TYPED)

# Two workers (pytest-xdist): the suite took 9-10 minutes on a 2-core CI box in one
# process, about 5 in two. Tests whose peers use mDNS on 127.0.0.1 share one worker
# (tests/daemons.py's LOOPBACK_MDNS). PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
pytest: $(VENV)/.installed
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

test: lint typecheck pytest

# Mutation testing of five pure modules (not part of `make test`; docs/testing.md):
# mutmut mutates them in a copy (mutants/), runs the fast tests that reach each mutant,
# then the killed share per module is printed (at least 85 % each, or this fails).
MUTATED := edgeci_p2p/wire/cbor.py edgeci_p2p/wire/tensors.py edgeci_p2p/core/geometry.py \
	edgeci_p2p/auction/bidder.py edgeci_p2p/planners/dpfl.py
mutation: $(VENV)/.installed
	HYPOTHESIS_PROFILE=mutation WIRE_FUZZ_EXAMPLES=300 $(VENV)/bin/mutmut run --max-children 2 || true
	$(PY) tests/mutation_report.py $(MUTATED)

bench: $(VENV)/.installed
	$(PY) benchmarks/executor.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis mutants
