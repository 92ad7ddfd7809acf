"""A learning-rate sweep of a small Mogao on the built-in world (CPU-sized: minutes per run).

python -m mogao_jax.sweep experiments/world_sweep.py --workdir runs/world_sweep --dry_run
python -m mogao_jax.sweep experiments/world_sweep.py:steps=30 --workdir runs/world_sweep

Config arguments: those of tiny_cpu.py (size, res, batch; here micro / 16 px / 8 rows by
default) plus steps (train.steps; the schedule's warmup is a tenth of it).
"""

import pathlib

from mogao_jax import config_args
from mogao_jax import sweep


def _tiny_cpu():
  return config_args.load_experiment(pathlib.Path(__file__).with_name("tiny_cpu.py"))


def get_config(arg=None):
  args = config_args.parse_arg(arg, size="micro", res=16, batch=8, steps=60)
  c = _tiny_cpu().get_config(f"size={args.size},res={args.res},batch={args.batch}")
  c.train.steps = args.steps
  c.train.log_every = max(1, args.steps // 10)
  c.train.ckpt_every = args.steps
  c.optim.warmup_steps = max(1, args.steps // 10)
  return c


def get_sweep():
  return sweep.product(**{"optim.lr": [5e-4, 2e-3, 8e-3]})
