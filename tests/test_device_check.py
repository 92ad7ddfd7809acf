"""benchmarks/device_check.sh's CPU dry run (DEVICE_CHECK_TINY=1: interpret mode, tiny sizes):
every check runs, the kernel matches dense in bf16, the logs and the profiler trace land in
$OUT and the summary table comes last. Slow: five JAX processes, each compiling."""

import os
import pathlib
import subprocess
import sys

import pytest

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
  assert len(rows) == 5 and all("| ok |" in r for r in rows), "\n".join(rows)
  assert "RESULT kernel_check PASS" in rows[0]
  for log in ("kernel_check.txt", "attention.txt", "step_dense.txt", "step_flash.txt",
              "profile.txt"):
    assert (tmp_path / log).stat().st_size > 0
  assert list(pathlib.Path(tmp_path, "trace").glob("**/*.trace.json.gz"))
