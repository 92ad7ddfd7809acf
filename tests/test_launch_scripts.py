"""The cluster launchers (launch/tpu_pod.sh, launch/slurm_gpu.sh) cannot run here (no gcloud,
TPU, SLURM or GPU): their syntax is checked, and the TPU one's commands are printed with
DRY_RUN=1 and inspected."""

import os
import subprocess

import pytest

from tests.configs import REPO


@pytest.mark.parametrize("script", ["tpu_pod.sh", "slurm_gpu.sh", "multiprocess_cpu.sh"])
def test_bash_syntax(script):
  subprocess.run(["bash", "-n", str(REPO / "launch" / script)], check=True)


def test_tpu_pod_commands():
  env = dict(os.environ, TPU_NAME="pod", TPU_ZONE="us-east5-a", TPU_PROJECT="proj", DRY_RUN="1")
  out = subprocess.run(["bash", "launch/tpu_pod.sh", "experiments/mogao_7b_v5p.py",
                        "--workdir", "gs://b/run"], cwd=REPO, env=env, check=True,
                       capture_output=True, text=True).stdout
  train = [line for line in out.splitlines() if "mogao_jax.train" in line]
  assert len(train) == 1 and "--worker=all" in train[0] and "--zone us-east5-a" in train[0]
  assert "--config.dist.auto=True" in train[0] and "gs://b/run" in train[0]
  assert "-c constraints.txt" in out


def test_tpu_pod_names_missing_env():
  env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
  r = subprocess.run(["bash", "launch/tpu_pod.sh", "experiments/mogao_7b_v5p.py"], cwd=REPO,
                     env=env, capture_output=True, text=True)
  assert r.returncode != 0 and "TPU_NAME" in r.stderr
