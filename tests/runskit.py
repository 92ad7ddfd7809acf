"""Tiny finished runs shared by test_compare and test_runcard: trained once per session.

Only config.seed differs between them: it reaches the program as an argument (the init key)
and the data order, so the three runs share one compiled step (persistent cache) instead of
compiling one program per learning rate.
"""

import json
import os
import shutil

from tests.configs import tiny_config

STEPS = 3
SEEDS = (0, 1, 2)
_CACHE = {}


def config(seed: int = 0):
  c = tiny_config()
  c.seed = seed
  c.train.update(steps=STEPS, ckpt_every=STEPS, log_every=1)
  return c


def train(workdir, seed: int = 0, tokenizer_from=None):
  """One tiny run into ``workdir`` (the tokenizer copied from another run, to save time)."""
  from mogao_jax.train import loop  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  if tokenizer_from:
    shutil.copy(os.path.join(tokenizer_from, "tokenizer.model"), workdir)
  loop.train(config(seed), str(workdir))
  return workdir


def sweep_root(tmp_path_factory):
  """ROOT with three finished runs ``seed=0|1|2`` (each with the sweep's overrides.json)."""
  if "root" not in _CACHE:
    root = tmp_path_factory.mktemp("sweep_root")
    first = None
    for seed in SEEDS:
      wd = root / f"seed={seed}"
      train(wd, seed, tokenizer_from=first)
      (wd / "overrides.json").write_text(json.dumps({"seed": seed}))
      first = first or wd
    _CACHE["root"] = root
  return _CACHE["root"]


def losses(workdir):
  return [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
