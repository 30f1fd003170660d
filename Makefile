# README.md's quick start: `make demo` runs the demo, `make test` passes the tests (and is
# what .ci/run runs). Both create .venv on first use through scripts/quickstart, which
# reinstalls only when pyproject.toml changed. Extra arguments: make demo ARGS='--duration 30'.
.PHONY: demo test env redis

demo: env
	.venv/bin/hubvisor demo $(ARGS)

test: redis env
	.venv/bin/python -m pytest $(ARGS)

env:
	@bash scripts/quickstart env

redis:
	@bash scripts/quickstart redis
