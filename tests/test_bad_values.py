"""Bad config values found by the audit of issue 31 (item 7): refused before any data read or
compile, as a ConfigError naming the key, which the entry point prints as one line."""

import subprocess
import sys

import pytest

from mogao_jax import config_schema
from mogao_jax.train import loop
from tests.configs import REPO, TINY_CPU


def _refused(config, tmp_path, match):
  with pytest.raises(config_schema.ConfigError, match=match) as e:
    loop.train(config, str(tmp_path / "run"))
  assert str(e.value).startswith("bad config value")
  assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("key, value, match", [
    ("model.vit_grid", 2, r"model.vit_grid = 2: data.image_size = 16 px is 4 patches of "
                          r"data.patch_size = 4 per side, more than the VIT position table's 2"),
    ("dist.process_id", 5, r"dist.process_id = 5: must be < dist.num_processes = 1"),
    ("train.steps", 10**12, r"train.steps = 1000000000000: must be in \[1, 100000000\]"),
    ("optim.warmup_steps", 4, r"optim.warmup_steps = 4: must be < train.steps = 4"),
])
def test_cross_key_rules(config, tmp_path, key, value, match):
  section, name = key.split(".")
  config[section][name] = value
  _refused(config, tmp_path, match)


@pytest.mark.parametrize("source, match", [
    ("webdataset:/x", r"config.data.source: source spec 'webdataset:/x': unknown kind"),
    ("jsonl:", r"config.data.source: source spec 'jsonl:': jsonl needs a path"),
    ("world?weight=-1", r"config.data.source: source 'world\?weight=-1'.*weight must be > 0"),
    ("jsonl:/nonexistent/*.jsonl", r"config.data.source: source '/nonexistent/\*.jsonl'|"
                                   r"no file matches '/nonexistent/\*.jsonl'"),
])
def test_bad_source_specs_name_the_key(config, tmp_path, source, match):
  config.data.source = source
  _refused(config, tmp_path, match)


def test_encode_latents_without_a_vae_named_first(config, tmp_path):
  config.data.latents = "encode"
  config.data.latent_patch, config.data.latent_channels = 2, 4  # latent_dim 16, not 48
  _refused(config, tmp_path, r"config.data.latents='encode' needs config.data.vae")


def test_entry_point_prints_one_line(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "mogao_jax.train", "--config", f"{TINY_CPU}:size=micro,res=16",
       "--workdir", str(tmp_path / "run"), "--config.train.steps=10",
       "--config.optim.warmup_steps=20"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      "error: bad config value: optim.warmup_steps = 20: must be < train.steps = 10")
