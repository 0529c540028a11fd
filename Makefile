# Two entry points: `make demo` and `make test`. Both install what they need (uv included) by themselves.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
export UV_COMPILE_BYTECODE := 1
export UV_PYTHON := 3.11

.PHONY: demo demo-alerts test lint bench sync

$(CURDIR)/.tools/bin/uv:
	python3 -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet uv

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	touch $@

sync: .venv/.synced

demo: sync
	$(UV) run --frozen python scripts/demo.py

demo-alerts: sync
	$(UV) run --frozen python scripts/demo_alerts.py

test: sync
	$(UV) run --frozen ruff check .
	$(UV) run --frozen pytest

lint: sync
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

# Figures, not assertions: each script prints what it measured in this run.
bench: sync
	$(UV) run --frozen python benchmarks/dag_parse.py
	$(UV) run --frozen python benchmarks/callback_overhead.py
	$(UV) run --frozen python benchmarks/webhook_clients.py
	$(UV) run --frozen python benchmarks/batch_job_memory.py
	$(UV) run --frozen python benchmarks/alerting_service_bench.py
