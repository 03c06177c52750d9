# The two commands of the README. Each prepares what it needs first (scripts/setup.sh is idempotent).
.PHONY: test demo setup lint manifests

PYTEST_ARGS ?=

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

setup:
	scripts/setup.sh

# Real photographs through `kompressor run` (RabbitMQ and S3 from KOMPRESSOR_* or started for it);
# writes demo-output/ (contact-sheet.png, manifest.jsonl, job.yaml, the WebP files; renditions.yaml,
# index.json and one source's renditions).
demo:
	scripts/setup.sh apt pip
	.venv/bin/python scripts/demo.py $(DEMO_ARGS)

lint: setup
	.venv/bin/ruff check . && .venv/bin/lint-imports
