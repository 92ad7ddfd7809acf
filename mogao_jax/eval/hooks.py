"""Training-loop hooks (train/hooks.py) that sample from the live params: text-to-image sample
grids and the world eval, written to TensorBoard. ``from_config`` is what the train entry point
plugs in.

Config keys: ``train.sample_every`` (0 = off), ``train.sample_n`` (default 4),
``train.sample_steps`` (ODE steps, default 25); ``train.eval_every`` (0 = off),
``train.eval_n`` (held-out items per category, default 2), ``train.eval_kinds`` (default
t2i and vqa). Both sample from the EMA params when the state has them.
"""

from __future__ import annotations

import flax.linen as nn
from absl import logging
import numpy as np

from mogao_jax import eval as eval_lib
from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.eval import run
from mogao_jax.sample import engine, sampling


class _Sampling:
  """A hook's one Sampler (its compiled programs reused across calls), given the live params
  for the duration of a call."""

  def __init__(self, every: int, batch_size: int, steps: int, max_tokens: int):
    self.every, self._batch, self._steps, self._max_tokens = every, batch_size, steps, max_tokens
    self._sampler = None

  def sampler(self, state, ctx) -> engine.Sampler:
    if self._sampler is None:
      self._sampler = engine.Sampler.from_config(
          ctx.config, None, tokenizer_lib.from_files(ctx.tokenizer_files),
          max_tokens=self._max_tokens, batch_size=self._batch,
          sc=sampling.SampleConfig(steps=self._steps))
    self._sampler.params = state.ema if getattr(state, "ema", None) is not None else state.params
    return self._sampler


class SampleGrid(_Sampling):
  """Every ``every`` steps: a few held-out t2i prompts sampled, as one image of samples over
  ground truth, plus the prompts as text."""

  def __call__(self, step, state, ctx) -> None:
    s = self.sampler(state, ctx)
    items = eval_lib.eval_prompts(ctx.config, 1, kinds=("t2i",))[:s.batch_size]
    with nn.logical_axis_rules(()):  # the sampler's batch need not split over the train mesh
      gen = run.generate(s, items, 0)
    s.params = None
    gold = [eval_lib.gold(it) for it in items]
    grid = np.concatenate([np.concatenate(gen, 1), np.concatenate(gold, 1)], 0)
    if ctx.tb is not None:
      ctx.tb.add_image("samples/t2i_vs_truth", grid, step, dataformats="HWC")
      ctx.tb.add_text("samples/prompts", " | ".join(it.context_parts[0].text for it in items),
                      step)
      ctx.tb.flush()


class PeriodicEval(_Sampling):
  """Every ``every`` steps: the world eval on ``n`` held-out items per category of ``kinds``,
  each kind's overall score and per-category scores as TensorBoard scalars and a log line."""

  def __init__(self, every: int, n: int, kinds, steps: int, max_tokens: int = 32):
    super().__init__(every, batch_size=8, steps=steps, max_tokens=max_tokens)
    self.n, self.kinds = n, tuple(kinds)

  def __call__(self, step, state, ctx) -> None:
    s = self.sampler(state, ctx)
    items = eval_lib.eval_prompts(ctx.config, self.n, kinds=self.kinds)
    with nn.logical_axis_rules(()):
      outputs = run.generate(s, items, self._max_tokens)
    s.params = None
    _, summary = run.score(items, outputs)
    for kind, sk in summary.items():
      logging.info("eval step %d: %s %.3f (%s)", step, kind, sk["overall"], ", ".join(
          f"{c} {v['acc']:.2f}" for c, v in sk["categories"].items()))
      if ctx.tb is not None:
        ctx.tb.add_scalar(f"eval/{kind}", sk["overall"], step)
        for cat, v in sk["categories"].items():
          ctx.tb.add_scalar(f"eval/{kind}/{cat}", v["acc"], step)
    if ctx.tb is not None:
      ctx.tb.flush()


def from_config(config) -> list:
  """The hooks the config asks for (none by default)."""
  t, hooks = config.train, []
  steps = int(t.get("sample_steps", 25))
  if t.get("sample_every", 0):
    hooks.append(SampleGrid(int(t.sample_every), int(t.get("sample_n", 4)), steps, 0))
  if t.get("eval_every", 0):
    hooks.append(PeriodicEval(int(t.eval_every), int(t.get("eval_n", 2)),
                              t.get("eval_kinds", ("t2i", "vqa")), steps))
  return hooks
