# The two commands of the README. Each prepares what it needs first (scripts/setup.sh is idempotent).
.PHONY: test demo setup lint manifests

PYTEST_ARGS ?=

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

setup:
	scripts/setup.sh

lint: setup
	.venv/bin/ruff check . && .venv/bin/lint-imports
