#!/usr/bin/env bash
# Trains on a SLURM GPU cluster: one task per node, each task owning all of its node's GPUs;
# jax.distributed reads the SLURM environment itself (--config.dist.auto=True).
#
#   sbatch --nodes=2 launch/slurm_gpu.sh experiments/mogao_1b_8gpu.py --workdir /shared/runs/1b
#
# Run from the repository root on a shared filesystem, with the venv installed beforehand:
#   python -m venv .venv && . .venv/bin/activate \
#     && pip install -c constraints.txt -e . 'jax[cuda12]'
# The workdir must be on a filesystem every node sees.
#
# NOT RUN HERE: this machine has no SLURM and no GPU; tests only check its syntax (bash -n).
#SBATCH --job-name=mogao_jax
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --output=slurm-%j.out
set -euo pipefail

config="${1:?usage: sbatch launch/slurm_gpu.sh CONFIG [trainer args...]}"
shift
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
# shellcheck disable=SC1091
. .venv/bin/activate

# One process per node sees all 8 GPUs; XLA may take most of their memory up front.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  python -m mogao_jax.train --config "$config" --config.dist.auto=True "$@"
