# trio-continuum tasks. `just --list` shows them.
# Uses ./.venv when it exists (the README's install makes it), else the python on PATH.

python := if path_exists(".venv/bin/python") == "true" { ".venv/bin/python" } else { "python3" }

# Run the tests (pytest; extra arguments go to pytest, e.g. `just test -k health`)
test *ARGS:
    {{python}} -m pytest {{ARGS}}

# Run only the adversarial suite: hostile clients and upstreams against a router process
adversarial *ARGS:
    {{python}} -m pytest tests/adversarial {{ARGS}}

# Check the code: ruff lint on src, tests and benches, then mypy (strict, src and benches)
lint:
    {{python}} -m ruff check src tests benches
    {{python}} -m mypy

# Start the router with a config file (default: the demo, two built-in mock backends, no API keys)
run CONFIG="configs/demo.yaml":
    {{python}} -m continuum run {{CONFIG}}

# Measure throughput and latency: direct to a mock, through a bare proxy, through the router
bench *ARGS:
    {{python}} benches/run.py {{ARGS}}

# A quick benchmark run (a few seconds per case) to check that the benchmarks work
bench-quick:
    {{python}} benches/run.py --quick

# Time to first streamed byte, direct vs through the router (local mocks; or --direct/--router/--model)
bench-ttfb *ARGS="--self-test":
    {{python}} benches/ttfb.py {{ARGS}}

# Load-test the router with wrk or hey, if one of them is installed
bench-external:
    {{python}} benches/run.py --scenarios external
