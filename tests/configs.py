"""Test configs without side effects (conftest.py also sets up JAX for the test process;
subprocess workers with their own device counts import this module instead)."""

import pathlib

from mogao_jax import config_args

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_CPU = REPO / "experiments" / "tiny_cpu.py"


def load_config(path=TINY_CPU):
  """``get_config()`` of an experiment file, by path (experiments/ is not a package)."""
  return config_args.load_experiment(path).get_config()


def shrink_config(config):
  """Test-sized copy of ``config``: a model and batch that compile and step in seconds."""
  c = config.copy_and_resolve_references()
  c.data.update(dict(image_size=16, patch_size=4, vocab_size=128, l_txt=64, l_vis=64,
                     batch_size=8, shuffle_buffer=16, num_workers=0))
  c.model.update(dict(vocab_size=128, width=32, depth=2, num_heads=2, num_kv_heads=1,
                      head_dim=16, mlp_dim=64, latent_dim=48, patch_dim=48, vit_width=32,
                      vit_depth=1, vit_heads=2, vit_grid=4))
  c.optim.warmup_steps = 1
  c.train.update(dict(steps=4, log_every=1, ckpt_every=2, keep_checkpoints=2))
  return c


def tiny_config():
  """experiments/tiny_cpu.py shrunk for tests."""
  return shrink_config(load_config())
