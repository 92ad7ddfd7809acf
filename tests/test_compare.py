"""compare on three tiny finished runs: table, CSV, PNG, TensorBoard hparams, eval scores."""

import csv
import json
import shutil
import subprocess
import sys

from PIL import Image
import pytest

from mogao_jax import compare
from tests import runskit
from tests.configs import REPO


@pytest.fixture
def root(tmp_path_factory, tmp_path):
  """A copy of the shared runs (this test adds files to it)."""
  src = runskit.sweep_root(tmp_path_factory)
  dst = tmp_path / "root"
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "tb"))
  return dst


def test_compare_three_runs(root):
  # A world eval of one run: its newest step's scores show up as columns.
  for step, score in ((1, 0.1), (runskit.STEPS, 0.75)):
    ev = root / "seed=1" / "eval" / f"step_{step}"
    ev.mkdir(parents=True)
    ev.joinpath("eval.json").write_text(json.dumps(
        {"summary": {"t2i": {"overall": score, "n": 4}, "vqa": {"overall": 0.5, "n": 4}}}))
  out = compare.compare(str(root))
  rows = {r["run"]: r for r in out["rows"]}
  assert sorted(rows) == ["seed=0", "seed=1", "seed=2"]
  for name, r in rows.items():
    want = runskit.losses(root / name)
    assert r["seed"] == int(name[-1]) and r["steps"] == runskit.STEPS
    assert r["final_loss"] == want[-1] and r["best_loss"] == min(want)
    assert r["tokens_per_s"] > 0
  assert rows["seed=1"]["eval_t2i"] == 0.75 and rows["seed=1"]["eval_vqa"] == 0.5
  assert rows["seed=0"].get("eval_t2i") is None
  lines = out["table"].splitlines()
  assert lines[0].split()[:3] == ["run", "seed", "steps"] and len(lines) == 5
  with open(out["csv"]) as f:
    table = list(csv.DictReader(f))
  assert [t["run"] for t in table] == ["seed=0", "seed=1", "seed=2"]
  assert float(table[1]["eval_t2i"]) == 0.75
  img = Image.open(out["png"])
  assert img.size[0] >= 800 and len(img.getcolors(1 << 16)) > 4  # panels with coloured lines
  # The two evals are a learning curve: score per skill against training minutes.
  curve = out["skill_curves"]["seed=1"]
  minutes = compare.train_minutes(compare.read_metrics(str(root / "seed=1" / "metrics.jsonl")))
  assert [(p["step"], p["geneval"], p["vqa"]) for p in curve] == [
      (1, 0.1, 0.5), (runskit.STEPS, 0.75, 0.5)]
  assert curve[-1]["minutes"] == minutes[runskit.STEPS] > curve[0]["minutes"] >= 0
  assert set(out["skill_curves"]) == {"seed=1"}
  assert Image.open(out["skills_png"]).size[0] >= 800
  assert out["skills_table"].splitlines()[0].split()[:4] == ["run", "step", "minutes", "geneval"]
  events = list((root / "tb_hparams").rglob("events.out.tfevents.*"))
  assert len(events) >= 3  # one hparams session per run


def test_overrides_from_configs_when_not_a_sweep(root):
  for name in ("seed=0", "seed=1", "seed=2"):
    (root / name / "overrides.json").unlink()
  rows, keys, _ = compare.collect(str(root))
  assert "seed" in keys  # the one config key that differs (plus data-free keys only)
  assert [r["seed"] for r in rows] == [0, 1, 2]


def test_cli(root, tmp_path):
  out = subprocess.run([sys.executable, "-m", "mogao_jax.compare", str(root)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "final_loss" in out.stdout and "seed=2" in out.stdout
  empty = subprocess.run([sys.executable, "-m", "mogao_jax.compare", str(tmp_path / "none")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
  assert empty.returncode == 1 and "no runs" in empty.stderr
