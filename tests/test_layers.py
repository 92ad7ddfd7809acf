"""The floors of WORKSPACE.md, checked by import-linter's layers contract (.importlinter)."""

import pathlib
import shutil
import subprocess
import sys

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _lint(root: pathlib.Path) -> subprocess.CompletedProcess:
  # A subprocess with the root first on sys.path: grimp reads `mogao_jax` from there.
  code = ("import sys; from importlinter.cli import lint_imports; "
          "sys.exit(lint_imports(config_filename='.importlinter', no_cache=True, no_logo=True))")
  return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_no_import_points_up_and_no_cycles():
  r = _lint(_REPO)
  assert r.returncode == 0, r.stdout + r.stderr
  assert "2 kept, 0 broken" in r.stdout


def test_an_import_pointing_up_fails(tmp_path):
  """The check can fail: train/loop.py importing sample/ again (what it once did) breaks it."""
  shutil.copytree(_REPO / "mogao_jax", tmp_path / "mogao_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(_REPO / ".importlinter", tmp_path)
  loop = tmp_path / "mogao_jax" / "train" / "loop.py"
  loop.write_text(loop.read_text().replace(
      "from mogao_jax.train import hooks as hooks_lib\n",
      "from mogao_jax.train import hooks as hooks_lib\nfrom mogao_jax.sample import engine\n"))
  r = _lint(tmp_path)
  assert r.returncode != 0
  assert "mogao_jax.train.loop -> mogao_jax.sample.engine" in r.stdout, r.stdout
