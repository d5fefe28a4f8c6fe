# The two front-door commands: `make demo` and `make test`. Both install what they need.
.PHONY: install demo test lint test-full bench

install:
	@command -v uv >/dev/null || pip install --quiet "uv==0.13.9"
	uv sync --frozen

demo: install
	uv run refund-processor demo

lint: install
	uv run ruff check .
	uv run ruff format --check .
	uv run mypy

test: lint
	uv run pytest

test-full: lint
	uv run pytest -m "slow or not slow"

bench: install
	uv run python bench/replay_bench.py
	uv run python bench/live_bench.py
