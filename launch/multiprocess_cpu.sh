#!/usr/bin/env bash
# N jax.distributed processes on this machine's CPU, on loopback, each with its share of
# simulated devices (MOGAO_CPU_DEVICES in all, default 8): the test harness of everything
# multi-host. Waits for all; if one fails, the others are stopped and its status returned.
#   ./launch/multiprocess_cpu.sh 2 --config experiments/tiny_cpu.py --workdir runs/mp
# The processes coordinate through JAX's own runtime (jax.distributed.initialize with the
# --config.dist.* values below); nothing else passes between them.
set -euo pipefail
cd "$(dirname "$0")/.."
. launch/_venv.sh
ensure_venv

n="${1:?usage: launch/multiprocess_cpu.sh NUM_PROCESSES [trainer args...]}"
shift
total="${MOGAO_CPU_DEVICES:-8}"
if (( n < 1 || total % n )); then
  echo "multiprocess_cpu.sh: $total devices (MOGAO_CPU_DEVICES) do not split over $n processes" >&2
  exit 2
fi
port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$((total / n))" JAX_PLATFORMS=cpu \
    python -m mogao_jax.train "$@" \
      --config.dist.coordinator_address="127.0.0.1:$port" \
      --config.dist.num_processes="$n" --config.dist.process_id="$i" &
  pids+=("$!")
done
status=0
for ((k = 0; k < n; k++)); do
  wait -n "${pids[@]}" || { status=$?; break; }
done
exit "$status"
