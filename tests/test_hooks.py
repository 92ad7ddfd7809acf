"""Training hooks: the loop calls them on their steps (train/hooks.py), and eval/hooks.py's
sample grid and periodic eval write what they promise to TensorBoard."""

import jax
import numpy as np
import pytest

from mogao_jax.data import pipeline
from mogao_jax.eval import hooks as eval_hooks
from mogao_jax.model.mogao import Mogao
from mogao_jax.train import hooks as hooks_lib
from tests import modelkit, runskit
from tests.configs import tiny_config


class _Recorder:
  every = 2

  def __init__(self):
    self.calls = []

  def __call__(self, step, state, ctx):
    self.calls.append((step, int(jax.device_get(state.step)), ctx.workdir))


def test_loop_calls_hooks_on_their_steps(tmp_path):
  rec = _Recorder()
  from mogao_jax.train import loop  # pylint: disable=g-import-not-at-top
  loop.train(runskit.config(0), str(tmp_path), hooks=[rec])  # 3 steps
  assert rec.calls == [(2, 2, str(tmp_path))]


class _TB:
  def __init__(self):
    self.images, self.scalars, self.texts = {}, {}, {}

  def add_image(self, tag, img, step, dataformats):
    self.images[tag] = (np.asarray(img), step, dataformats)

  def add_scalar(self, tag, value, step):
    self.scalars[tag] = (value, step)

  def add_text(self, tag, text, step):
    self.texts[tag] = text

  def flush(self):
    pass


class _State:
  def __init__(self, params):
    self.params, self.ema = params, None


@pytest.mark.slow  # a training run with sampling and eval hooks (~50 s): keeps the default suite inside its 20 minutes
def test_sample_grid_and_periodic_eval_write_to_tensorboard(tmp_path):
  c = tiny_config()
  # The scorer reads the world's resolutions (32 px and up), as in test_evaluate.
  c.data.update(dict(image_size=32, patch_size=8, l_vis=96))
  c.model.update(dict(patch_dim=192, latent_dim=192))
  c.train.update(dict(sample_every=5, sample_n=2, sample_steps=2, eval_every=7, eval_n=1,
                      eval_kinds=("t2i", "vqa")))
  tok = pipeline.make_tokenizer(c, str(tmp_path))
  grid, ev = eval_hooks.from_config(c)
  assert (grid.every, ev.every) == (5, 7)
  tb = _TB()
  ctx = hooks_lib.Context(c, str(tmp_path), tb, tok.files)
  state = _State(modelkit.fresh_params(c, Mogao.from_config(c)))
  grid(5, state, ctx)
  img, step, fmt = tb.images["samples/t2i_vs_truth"]
  assert (step, fmt) == (5, "HWC") and img.shape == (2 * 32, 2 * 32, 3)  # samples over truth
  assert len(tb.texts["samples/prompts"].split(" | ")) == 2
  ev(7, state, ctx)
  assert {"eval/t2i", "eval/vqa"} <= set(tb.scalars)
  assert all(0.0 <= v <= 1.0 and s == 7 for v, s in tb.scalars.values())
  assert any(t.startswith("eval/vqa/") for t in tb.scalars)  # per-category scalars too
