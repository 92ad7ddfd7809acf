#!/usr/bin/env bash
# Trains on a Cloud TPU pod slice: copies this checkout to every worker of the TPU VM, installs
# the pinned environment there (constraints.txt) and starts the trainer on all workers at once;
# jax.distributed finds the slice's hosts itself (--config.dist.auto=True).
#
#   TPU_NAME=my-v5p-256 TPU_ZONE=us-east5-a TPU_PROJECT=my-project \
#     launch/tpu_pod.sh experiments/mogao_7b_v5p.py --workdir gs://BUCKET/runs/mogao_7b [flags...]
#
# Env: TPU_NAME, TPU_ZONE, TPU_PROJECT (required); REMOTE_DIR (default ~/mogao_jax on the
# workers); SKIP_INSTALL=1 to reuse the workers' venv; DRY_RUN=1 to print the commands only.
# The workdir must be reachable from every worker (a gs:// bucket), not a local path.
#
# NOT RUN HERE: this machine has no gcloud and no TPU; tests only check its syntax (bash -n).
set -euo pipefail
cd "$(dirname "$0")/.."

config="${1:?usage: launch/tpu_pod.sh CONFIG [trainer args...]}"
shift
: "${TPU_NAME:?set TPU_NAME (the TPU VM name)}"
: "${TPU_ZONE:?set TPU_ZONE (e.g. us-east5-a)}"
: "${TPU_PROJECT:?set TPU_PROJECT (the GCP project)}"
remote="${REMOTE_DIR:-mogao_jax}"

run() { if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "$*"; else "$@"; fi; }
where=(--zone "$TPU_ZONE" --project "$TPU_PROJECT" --worker=all)
ssh_all() { run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --command "$1"; }

# The same code on every worker: a tarball of the tracked files (no venv, runs or caches).
tarball="$(mktemp -t mogao_jax.XXXXXX.tar.gz)"
trap 'rm -f "$tarball"' EXIT
git ls-files -z | tar --null -czf "$tarball" -T -
run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:/tmp/mogao_jax.tar.gz" "${where[@]}"
ssh_all "mkdir -p $remote && tar -xzf /tmp/mogao_jax.tar.gz -C $remote"

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  # jax[tpu] pulls libtpu; the constraints file pins jax/flax/optax to the tested versions.
  libtpu="https://storage.googleapis.com/jax-releases/libtpu_releases.html"
  ssh_all "cd $remote && python3 -m venv .venv && . .venv/bin/activate && pip install -q \
-c constraints.txt -e . 'jax[tpu]' -f $libtpu"
fi

args="$(printf '%q ' "$@")"
ssh_all "cd $remote && . .venv/bin/activate && python -m mogao_jax.train --config $config \
--config.dist.auto=True $args"
