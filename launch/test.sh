#!/usr/bin/env bash
# Runs the test suite on this machine: bash launch/test.sh [pytest args...]
# Creates or reuses .venv in the repo root and installs the pinned test environment once
# (a stamp keyed on setup.cfg + pyproject.toml + constraints.txt skips it on repeat runs).
# PYTEST_XDIST=N runs N workers (default 0: on 2 cores the 8-device XLA compiles of the
# suite are CPU bound, and worker start-up + per-worker JAX import costs more than it saves).
set -euo pipefail
cd "$(dirname "$0")/.."

. launch/_venv.sh

ensure_venv test,torch,hf  # torch + transformers/diffusers: the conversion parity tests
workers="${PYTEST_XDIST:-0}"
xdist=()
[[ "$workers" != 0 ]] && xdist=(-n "$workers")
exec python -m pytest -q --durations=15 "${xdist[@]}" "$@"
