"""config_schema: every key of every experiment config is declared, and a value outside its range
stops the trainer before any work, with an error naming the full key."""

import pathlib
import subprocess
import sys
import tempfile

import pytest

from mogao_jax import config_args, config_schema
from mogao_jax.train import loop
from tests import partskit
from tests.configs import REPO

EXPERIMENTS = sorted((REPO / "experiments").glob("*.py"))
_PARTS = {}


def _config(path: pathlib.Path):
  arg = None
  if path.name in ("tiny_latent.py", "mogao_from_parts.py"):  # need parts: configs suffice
    if "dir" not in _PARTS:
      _PARTS["dir"] = partskit.config_only_parts(tempfile.mkdtemp(prefix="parts"))
    arg = f"parts={_PARTS['dir']}"
  return config_args.load_experiment(path).get_config(arg)


def _numeric_leaves(config):
  """(full key, bad value) for every numeric key, weights entries included."""
  for key, value in config_schema.leaves(config).items():
    if config_schema.SCHEMA[key].kind == "weights":
      for name in value:
        yield f"{key}.{name}", -1.0
    for bad in config_schema.out_of_range(key):
      yield key, bad


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_key_is_declared_and_valid(path):
  assert config_schema.problems(_config(path)) == []


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_numeric_key_out_of_range_stops_train_naming_it(path, tmp_path):
  cases = list(_numeric_leaves(_config(path)))
  numeric = [k for k, v in config_schema.leaves(_config(path)).items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
  assert len(numeric) > 40 and {k for k, _ in cases} >= set(numeric)  # each has a range
  workdir = tmp_path / "run"
  for key, bad in cases:
    config = _config(path)
    *sections, name = key.split(".")
    node = config
    for s in sections:
      node = node[s]
    node[name] = bad
    with pytest.raises(ValueError) as e:
      loop.train(config, str(workdir))
    assert f"{key} = {bad!r}" in str(e.value), (key, bad, str(e.value))
    assert not workdir.exists()  # refused before anything was written


@pytest.mark.parametrize("key, value, why", [
    ("data.l_vis", 0, "must be in [1, inf)"),  # was a ZeroDivisionError in the packer
    ("data.batch_size", -4, "must be in [1, inf)"),  # was Grain's error without the key
    ("optim.lr", float("inf"), "must be finite"),  # was: every step skipped, exit 0
    ("model.rope_theta", -1.0, "must be in (0.0, inf)"),  # was: NaN losses
    ("flow.shift", 0.0, "must be in (0.0, inf)"),
    ("data.shuffle_buffer", -1, "must be in [0, inf)"),
    ("data.num_workers", -1, "must be in [0, inf)"),
    ("model.remat", "some", "must be one of ['none', 'full', 'dots']"),
    ("data.story_steps", (3, 2), "must be (min, max) ints"),
])
def test_the_audit_values_are_refused(key, value, why):
  config = _config(REPO / "experiments" / "tiny_cpu.py")
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match="bad config value") as e:
    config_schema.validate(config)
  assert f"{key} = {value!r}: {why}" in str(e.value)


def test_unknown_and_missing_keys_are_named():
  config = _config(REPO / "experiments" / "tiny_cpu.py")
  config.unlock()
  config.train.stesp = 3
  del config.optim["b2"]
  with pytest.raises(ValueError) as e:
    config_schema.validate(config)
  assert "train.stesp: unknown config key" in str(e.value)
  assert "optim.b2: missing from the config" in str(e.value)


def test_command_line_override_of_an_unknown_key_names_its_section():
  out = subprocess.run(
      [sys.executable, "-m", "mogao_jax.train", "--config", "experiments/tiny_cpu.py",
       "--config.train.nonexistent_key=3", "--workdir", "/nonexistent/never"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1
  assert "--config.train.nonexistent_key: train has no key 'nonexistent_key' (it has:" \
      in out.stderr, out.stderr[-2000:]
  assert "Traceback" not in out.stderr


def test_command_line_bad_value_ends_with_the_message_alone(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "mogao_jax.train", "--config", "experiments/tiny_cpu.py",
       "--config.data.l_vis=0", "--workdir", str(tmp_path / "run")],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1
  assert out.stderr.rstrip().endswith("data.l_vis = 0: must be in [1, inf)"), out.stderr[-2000:]
  assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()
