# tidegate developer tasks. `make` lists them.
.DEFAULT_GOAL := help
UV ?= uv

.PHONY: help install test test-fast lint format typecheck check demo up down bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: ## create .venv from uv.lock (uv run does this on demand too)
	$(UV) sync --locked --compile-bytecode

test: ## the whole test suite (what CI runs; 6-11 min on 2 cores, starts its own Pub/Sub and GCS emulators)
	$(UV) run pytest

test-fast: ## every test that needs no Pub/Sub emulator (~1.5-4 min)
	$(UV) run pytest -m "not emulator"

lint: ## ruff lint + format check
	$(UV) run ruff check .
	$(UV) run ruff format --check .

format: ## apply ruff formatting and safe fixes
	$(UV) run ruff check --fix .
	$(UV) run ruff format .

typecheck: ## mypy (strict) on the packages, then the import layers (import-linter)
	$(UV) run mypy
	$(UV) run lint-imports

check: lint typecheck test ## everything CI and a reviewer expect green

demo: ## the end-to-end demo on a private emulator
	$(UV) run tidegate demo

up: ## start + provision the local Pub/Sub emulator
	$(UV) run tidegate up

down: ## stop the emulator tidegate started
	$(UV) run tidegate down

bench: ## producer throughput on this machine
	$(UV) run tidegate bench produce --events 200000

clean: ## remove local state (.tidegate/) and caches
	rm -rf .tidegate .pytest_cache .mypy_cache .ruff_cache
