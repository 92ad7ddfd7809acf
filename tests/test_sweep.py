"""Config arguments, sweep expansion, run naming, key checks before anything runs, the runner."""

import subprocess
import sys

import pytest

from mogao_jax import config_args
from mogao_jax import sweep
from tests.configs import REPO, TINY_CPU

_EXPERIMENT = '''
import importlib.util
from mogao_jax import sweep

_spec = importlib.util.spec_from_file_location("tiny_cpu", {tiny!r})
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)


def get_config(arg=None):
  return _tiny.get_config(arg)


def get_sweep():
  return {sweep!s}
'''


def _experiment(tmp_path, runs="sweep.product(**{'optim.lr': [1e-3, 2e-3], 'model.depth': [2, 3]})"):
  path = tmp_path / "exp.py"
  path.write_text(_EXPERIMENT.format(tiny=str(TINY_CPU), sweep=runs))
  return str(path)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "mogao_jax.sweep", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


# --- config arguments -------------------------------------------------------------------------

def test_config_args_default_is_the_plain_config():
  from tests.configs import load_config  # pylint: disable=g-import-not-at-top
  module = config_args.load_experiment(TINY_CPU)
  plain = load_config().to_dict()
  assert module.get_config("size=tiny,res=32,batch=16").to_dict() == plain
  assert module.get_config("").to_dict() == plain
  small = module.get_config("size=micro,res=16")
  assert (small.model.width, small.data.image_size, small.model.vit_grid) == (32, 16, 4)


@pytest.mark.parametrize("arg, needle", [("res=big", "res"), ("rez=16", "rez"),
                                         ("size=huge", "size"), ("res=18", "res=18")])
def test_bad_config_arg_names_the_key(arg, needle):
  module = config_args.load_experiment(TINY_CPU)
  with pytest.raises(ValueError, match=needle):
    module.get_config(arg)


def test_parse_arg_types():
  a = config_args.parse_arg("n=3,x=0.5,flag,name=b", n=1, x=1.0, flag=False, name="a")
  assert (a.n, a.x, a.flag, a.name) == (3, 0.5, True, "b")
  with pytest.raises(ValueError, match="given twice"):
    config_args.split_arg("n=1,n=2")
  assert sweep.merge_arg("size=micro,res=16", "res=32") == "size=micro,res=32"


# --- expansion and naming ---------------------------------------------------------------------

def test_product_and_zipped():
  grid = sweep.product(**{"optim.lr": [1, 2], "model.depth": [2, 3, 4]})
  assert len(grid) == 6 and grid[0] == {"optim.lr": 1, "model.depth": 2}
  assert grid[-1] == {"optim.lr": 2, "model.depth": 4}
  assert sweep.zipped(a=[1, 2], b=[3, 4]) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
  with pytest.raises(ValueError, match="differ in length"):
    sweep.zipped(a=[1, 2], b=[3])


def test_names_are_safe_and_collision_free():
  runs = [{"data.name": "a/b"}, {"data.name": "a-b"}, {"data.name": "a b"}, {"data.name": "c"}]
  names = sweep.run_names(runs)
  assert len(set(names)) == 4 and names[3] == "name=c"
  assert all("/" not in n and " " not in n for n in names)
  assert all(n.startswith("name=a-b-") for n in names[:3])  # clash -> hash suffix
  assert names == sweep.run_names(runs)  # stable: a rerun finds the same workdirs
  # Same last part of two keys: the full dotted key disambiguates.
  assert sweep.run_names([{"data.vocab_size": 1, "model.vocab_size": 2}]) == [
      "data.vocab_size=1_model.vocab_size=2"]
  long = [{"data.x": "y" * 200 + str(i)} for i in range(2)]
  assert all(len(n) <= 96 for n in sweep.run_names(long))
  assert len(set(sweep.run_names(long))) == 2
  assert sweep.run_names([{}]) == ["base"]
  with pytest.raises(ValueError, match="same overrides"):
    sweep.run_names([{"a.b": 1}, {"a.b": 1}])


def test_plan_commands(tmp_path):
  runs = sweep.plan(_experiment(tmp_path) + ":size=micro", str(tmp_path / "root"),
                    common={"train.steps": 5})
  assert [r["name"] for r in runs] == ["lr=0.001_depth=2", "lr=0.001_depth=3",
                                       "lr=0.002_depth=2", "lr=0.002_depth=3"]
  cmd = runs[1]["command"]
  assert cmd[cmd.index("--config") + 1].endswith("exp.py:size=micro")
  assert "--config.optim.lr=0.001" in cmd and "--config.model.depth=3" in cmd
  assert "--config.train.steps=5" in cmd
  assert cmd[cmd.index("--workdir") + 1] == str(tmp_path / "root" / "lr=0.001_depth=3")
  presets = sweep.plan(_experiment(tmp_path, "[{'arg': 'size=micro'}, {'arg': 'size=small'}]"),
                       str(tmp_path / "r"))
  assert [r["name"] for r in presets] == ["size=micro", "size=small"]
  assert presets[1]["command"][presets[1]["command"].index("--config") + 1].endswith(
      "exp.py:size=small")


@pytest.mark.parametrize("runs, needle", [
    ("[{'optim.lr': 1e-3}, {'optim.lrr': 1e-3}]", "'optim.lrr' is not in the config"),
    ("[{'optimizer.lr': 1e-3}]", "no 'optimizer'"),
    ("[{'model.depth': 'deep'}]", "'model.depth'"),
    ("[{'model': 3}]", "is a config section"),
])
def test_bad_sweep_key_fails_naming_it(tmp_path, runs, needle):
  with pytest.raises(ValueError, match=needle):
    sweep.plan(_experiment(tmp_path, runs), str(tmp_path / "root"))


# --- the command ----------------------------------------------------------------------------

def test_cli_dry_run_emit_and_bad_key(tmp_path):
  exp, root = _experiment(tmp_path), tmp_path / "root"
  out = _cli(exp, "--workdir", str(root), "--dry_run")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.count("-m mogao_jax.train") == 4 and not root.exists()
  out = _cli(exp, "--workdir", str(root), "--emit_commands", "--launcher", "sbatch run.sh")
  assert out.returncode == 0, out.stderr[-2000:]
  lines = (root / "commands.sh").read_text().splitlines()
  assert len(lines) == 4 and all(line.startswith("sbatch run.sh --config") for line in lines)
  assert (root / "lr=0.002_depth=3" / "overrides.json").exists()
  bad = _cli(exp, "--workdir", str(tmp_path / "bad"), "--set", "train.stepz=3")
  assert bad.returncode != 0 and "train.stepz" in bad.stderr
  assert not (tmp_path / "bad").exists()  # failed before anything ran


def test_train_entry_takes_the_config_arg(tmp_path):
  out = subprocess.run([sys.executable, "-m", "mogao_jax.train", "--config",
                        f"{TINY_CPU}:rez=16", "--workdir", str(tmp_path / "w")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "rez" in out.stderr
  assert not (tmp_path / "w").exists()


def test_run_all_parallel_and_failures(tmp_path):
  # Each of the first two waits for the other's marker: it only passes if they run together.
  wait = ("import os, sys, time; open(sys.argv[1], 'w').close(); t = time.time()\n"
          "while not os.path.exists(sys.argv[2]) and time.time() - t < 60: time.sleep(0.05)\n"
          "sys.exit(0 if os.path.exists(sys.argv[2]) else 3)")
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  cmds = [[sys.executable, "-c", wait, a, b], [sys.executable, "-c", wait, b, a],
          [sys.executable, "-c", "import sys; print('bad'); sys.exit(2)"]]
  logs = [str(tmp_path / f"{i}.log") for i in range(3)]
  assert sweep.run_all(cmds, logs, parallel=2, poll_s=0.05) == [0, 0, 2]
  assert (tmp_path / "2.log").read_text().strip() == "bad"
