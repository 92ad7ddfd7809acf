#!/usr/bin/env bash
# Trains the tiny default experiment on this machine's CPU:
#   bash launch/local.sh [--config.train.steps=200] [--workdir runs/other] [more flags...]
# Extra arguments pass through to `python -m mogao_jax.train`; a later --workdir or --config
# overrides the defaults below. Creates or reuses .venv in the repo root and installs the
# pinned environment once (a stamp keyed on setup.cfg + pyproject.toml + constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

. launch/_venv.sh

ensure_venv
exec python -m mogao_jax.train --config experiments/tiny_cpu.py --workdir runs/tiny_cpu "$@"
