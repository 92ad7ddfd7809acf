#!/usr/bin/env bash
# Runs the test suite on this machine: bash launch/test.sh [pytest args...]
# Creates or reuses .venv in the repo root and installs the pinned test environment once
# (a stamp keyed on setup.cfg + pyproject.toml + constraints.txt skips it on repeat runs).
# PYTEST_XDIST=N runs N pytest-xdist workers, one test file each at a time (--dist loadfile:
# a file's module fixtures compile once). Default 2: a serial run keeps about one core busy
# (XLA compiles are single-threaded), so 2 workers halve it on 2 cores: the default suite on a
# fresh clone, cold cache, 2 cores took 13:37 with 2 workers against 27:06 serial (2026-12-08,
# WORKSPACE.md "Tests and speed"). 0 = serial (.ci/run's slow tests: multiprocess runs).
set -euo pipefail
cd "$(dirname "$0")/.."

. launch/_venv.sh

ensure_venv test,torch,hf  # torch + transformers/diffusers: the conversion parity tests
workers="${PYTEST_XDIST:-2}"
xdist=()
[[ "$workers" != 0 ]] && xdist=(-n "$workers" --dist loadfile)
exec python -m pytest -q --durations=15 "${xdist[@]}" "$@"
