"""Sample grids in TensorBoard during training (config ``train.sample_every``, 0 = off).

Every `sample_every` steps the loop calls `log_samples`: a few held-out t2i prompts are sampled
with the current (EMA if any) params and written as one image, samples over ground truth, plus
the prompts as text. Config keys read: ``train.sample_every``, ``train.sample_n`` (default 4),
``train.sample_steps`` (ODE steps, default 25).
"""

from __future__ import annotations

import time

import flax.linen as nn
import numpy as np

_SAMPLERS = {}  # one Sampler (and its compiled programs) per model config + tokenizer


def _sampler(config, tokenizer_proto: bytes):
  from mogao_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from mogao_jax.sample import engine, sampling  # pylint: disable=g-import-not-at-top
  from mogao_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  key = (repr(config.model), repr(config.data), hash(tokenizer_proto))
  if key not in _SAMPLERS:
    d, n = config.data, int(config.train.get("sample_n", 4))
    sc = sampling.SampleConfig(steps=int(config.train.get("sample_steps", 25)))
    _SAMPLERS[key] = engine.Sampler(
        step_lib.make_model(config), None, tokenizer=tokenizer_lib.Tokenizer(tokenizer_proto),
        image_size=d.image_size, patch_size=d.patch_size, batch_size=n, sc=sc,
        capacity=-(-(d.l_txt + d.l_vis) // 64) * 64)
  return _SAMPLERS[key]


def log_samples(config, state, writer, tokenizer_proto: bytes, step: int) -> float:
  """Samples and logs (writer None: sample only, e.g. on non-primary processes); returns the
  seconds it took, for the loop to leave out of its throughput."""
  from mogao_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  from mogao_jax.sample import engine  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  s = _sampler(config, tokenizer_proto)
  s.params = state.ema if getattr(state, "ema", None) is not None else state.params
  items = eval_lib.eval_prompts(config, 1, kinds=("t2i",))[:s.batch_size]
  # Empty logical rules: the sampler's batch need not split over the training mesh.
  with nn.logical_axis_rules(()):
    docs = s.run([[*it.context_parts, engine.Gen()] for it in items])
  s.params = None
  gen = [d[-1][1].pixels for d in docs]
  gold = [eval_lib.gold(it) for it in items]
  grid = np.concatenate([np.concatenate(gen, 1), np.concatenate(gold, 1)], 0)
  if writer is not None:
    writer.add_image("samples/t2i_vs_truth", grid, step, dataformats="HWC")
    writer.add_text("samples/prompts", " | ".join(it.context_parts[0].text for it in items),
                    step)
    writer.flush()
  return time.perf_counter() - t0
