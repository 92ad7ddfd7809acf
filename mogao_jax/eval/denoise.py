"""How well the model denoises at each noise level: a diagnostic of image generation.

    python -m mogao_jax.eval.denoise --workdir DIR [--n 24]

For n held-out scenes, each fully described (every object's size, colour, shape and cell: the
prompt determines the image, so there is one right answer), it noises the rendered image to
fixed times t with fixed noise and prints the mean squared error of the model's clean-image
estimate x1_hat = x_t + (1 - t) v (pixels in [-1, 1]) at each t. The sampler decides the
layout and colours from x1_hat at low t and returns x1_hat near t = 1 at its last step, so this
says at which noise levels a model is weak; which t get trained is set by flow.logit_mean /
logit_std / shift. On the world the error at t = 0.3 separated the large differences in the
t2i scores (benchmarks/LEARNING.md, "The world's learning curve"): a wider time distribution cut the
t = 0.9 error 3x, raised the t = 0.3 error and dropped t2i colour from 0.38 to 0.02.
"""

from __future__ import annotations

from absl import app, flags
import jax
import numpy as np

from mogao_jax.data.sources import world
from mogao_jax.data.sources.world import scene as scene_lib
from mogao_jax.eval import sensitivity
from mogao_jax.sample import load
from mogao_jax.model.mogao import Mogao

TIMES = (0.0, 0.3, 0.6, 0.9, 0.97)


def x1_errors(config, params, tokenizer, n: int = 24, times=TIMES,
              seed: int = 0) -> dict[float, float]:
  """{t: mean over n held-out described scenes of the per-pixel MSE of x1_hat}. Scene i is
  noised with the noise of seed + i at every t."""
  apply = jax.jit(Mogao.from_config(config).apply)
  rng = np.random.default_rng(seed)
  errors = {t: [] for t in times}
  for i in range(n):
    scene = scene_lib.sample_in_split(rng, "eval", scene_lib.sample_scene)
    b = sensitivity.t2i_row(config, tokenizer, world.describe(scene),
                            world.render(scene, config.data.image_size))
    for t in times:
      v, target = sensitivity.noised_velocities(apply, params, b, t, seed=seed + i)
      # x1_hat - x1 = (1 - t) (v - target): the velocity error scaled back to pixels.
      errors[t].append(float(np.mean(np.square((1.0 - t) * (v - target)))))
  return {t: float(np.mean(e)) for t, e in errors.items()}


def report(workdir: str, n: int) -> str:
  config, params, step, tokenizer = load.load(workdir)
  errs = x1_errors(config, params, tokenizer, n)
  return (f"step {step}, {n} held-out described scenes: MSE of x1_hat by t\n"
          + "  ".join(f"t={t}: {e:.4f}" for t, e in errs.items()))


def main(argv):
  del argv
  print(report(flags.FLAGS.workdir, flags.FLAGS.n))


if __name__ == "__main__":
  # Flags only when run as a command (as sensitivity.py): pytest imports command modules side
  # by side, and a second --workdir definition would fail at collection.
  flags.DEFINE_string("workdir", None, "a training workdir (its latest checkpoint)")
  flags.DEFINE_integer("n", 24, "held-out scenes")
  flags.mark_flag_as_required("workdir")
  app.run(main)
