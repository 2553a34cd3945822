# trio-continuum tasks. `just --list` shows them.
# Uses ./.venv when it exists (the README's install makes it), else the python on PATH.

python := if path_exists(".venv/bin/python") == "true" { ".venv/bin/python" } else { "python3" }

# Run the test suite
test *ARGS:
    {{python}} -m pytest {{ARGS}}

# The adversarial suite alone: hostile clients and upstreams against a router process
adversarial *ARGS:
    {{python}} -m pytest tests/adversarial {{ARGS}}

# Lint and type-check
lint:
    {{python}} -m ruff check src tests benches
    {{python}} -m mypy

# Run the router on a config (default: the no-keys demo)
run CONFIG="configs/demo.yaml":
    {{python}} -m continuum run {{CONFIG}}

# Benchmarks: router vs the bare trio+httptools floor proxy vs direct, in one run
bench *ARGS:
    {{python}} benches/run.py {{ARGS}}

# A short benchmark run (a few seconds per scenario) that checks the suite works
bench-quick:
    {{python}} benches/run.py --quick

# Issue 4's TTFB comparison on local mocks (or pass --direct/--router/--model)
bench-ttfb *ARGS="--self-test":
    {{python}} benches/ttfb.py {{ARGS}}

# wrk/hey against the router, when installed
bench-external:
    {{python}} benches/run.py --scenarios external
