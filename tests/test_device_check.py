"""benchmarks/device_check.sh's CPU dry run (DEVICE_CHECK_TINY=1: interpret mode, tiny sizes):
every check runs, the kernel matches dense in bf16 and jax's Pallas Triton `mha` on a causal
row (both in interpret mode; every relative error under 2e-2, kernel_check's --tol: two bf16
kernels with f32 accumulation, ~6e-3 seen), the logs and the profiler trace land in $OUT and
the summary table comes last. Slow: six JAX processes, each compiling."""

import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import common
from tests.configs import REPO


@pytest.mark.slow
def test_device_check_tiny_dry_run(tmp_path):
  env = dict(os.environ, OUT=str(tmp_path), DEVICE_CHECK_TINY="1", PYTHON=sys.executable,
             PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  run = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh")], env=env,
                       capture_output=True, text=True, timeout=1500, check=False)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  lines = run.stdout.strip().splitlines()
  rows = lines[lines.index("|---|---|---|---|---|") + 1:]
  assert len(rows) == 6 and all("| ok |" in r for r in rows), "\n".join(rows)
  assert "RESULT kernel_check PASS" in rows[0]
  assert "flash vs Pallas mha, causal, 256 slots" in rows[1] and "RESULT vs_mha PASS" in rows[1]
  assert "of mha's speed (target n/a (interpret mode))" in rows[1]
  (mha,) = common.parse_table((tmp_path / "vs_mha_256.txt").read_text())
  assert all(float(mha[f"{n}_err"]) < 2e-2 for n in ("out", "dq", "dk", "dv")), mha
  assert float(mha["flash_ms"]) > 0 and float(mha["mha_ms"]) > 0
  for log in ("kernel_check.txt", "vs_mha_256.txt", "attention.txt", "step_dense.txt",
              "step_flash.txt", "profile.txt"):
    assert (tmp_path / log).stat().st_size > 0
  assert list(pathlib.Path(tmp_path, "trace").glob("**/*.trace.json.gz"))
