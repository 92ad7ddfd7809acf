"""The quickstart's recipe search (issue #20): candidates of the tiny default at a 15-minute
budget on 2 CPU cores, each scored on the world (benchmarks/LEARNING.md, "15 minutes").

python -m mogao_jax.sweep experiments/learning_sweep.py --workdir runs/learning --dry_run
python -m mogao_jax.sweep experiments/learning_sweep.py --workdir runs/learning
python -m mogao_jax.evaluate --workdir runs/learning/<run> --n_per_category 20 \
    [--checkpoint_step S]   # S = a kept step (keep_every), for the curve of score vs minutes

Equal wall time, not equal steps: each candidate's train.steps is its measured seconds per
step (the trainer's, 2 cores) into 15 minutes. Checkpoints every third of the run are kept
for the curves.
"""

import pathlib

from mogao_jax import config_args
from mogao_jax import sweep

# The default before this search: four heads of 32. The default now has two of 64 (the same
# width and projection FLOPs, half the [B, H, L, L] score tensors, the step's largest cost on
# the CPU; benchmarks/RESULTS.md section 12).
HEADS_4x32 = {"model.num_heads": 4, "model.num_kv_heads": 2, "model.head_dim": 32}
# The doc mix before this search (the default now has edit and story at 15% each).
MIX_B = {"data.doc_weights.t2i": 0.45, "data.doc_weights.caption": 0.2,
         "data.doc_weights.vqa": 0.25, "data.doc_weights.edit": 0.05,
         "data.doc_weights.story": 0.05}


def get_config(arg=None):
  args = config_args.parse_arg(arg, steps=940)
  c = config_args.load_experiment(pathlib.Path(__file__).with_name("tiny_cpu.py")).get_config()
  c.train.steps = args.steps
  c.train.ckpt_every = 100
  c.train.keep_checkpoints = 1
  c.train.keep_every = 300
  return c


def get_sweep():
  return [
      {"train.steps": 940, **MIX_B},  # 0.90-0.94 s/step
      {"train.steps": 940},  # the default now
      {"train.steps": 940, "loss.image_weight": 2.0},
      {"train.steps": 800, **HEADS_4x32, **MIX_B},  # the default before, 1.13 s/step
  ]
