"""Per-part learning rates and freezing (optim.lr_scale, train/optimizer.py PARTS): which
parameter paths each part holds, the scaled and frozen updates against the plain optimizer,
no Adam state for a frozen part, and the error naming an unknown part."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mogao_jax.train import optimizer


def _params():
  leaf = lambda *s: jnp.full(s, 0.5)  # noqa: E731
  return {"vit": {"encoder": {"fc1": {"kernel": leaf(3, 4), "bias": leaf(4)}}},
          "connector": {"fc1": {"kernel": leaf(4, 4)}},
          "embed_tokens": {"embedding": leaf(8, 4)}, "lm_head": {"kernel": leaf(4, 8)},
          "txt_norm": {"scale": leaf(4)},
          "stack": {"layers": {"txt": {"q_proj": {"kernel": leaf(2, 4, 4)}},
                               "vis": {"q_proj": {"kernel": leaf(2, 4, 4)}},
                               "adaln_table": leaf(2, 6, 4)}},
          "vis_in": {"kernel": leaf(5, 4)}, "t_mod": {"kernel": leaf(4, 6, 4)}}


def _parts(params):
  return {jax.tree_util.keystr(p): optimizer.part_of(p)
          for p, _ in jax.tree_util.tree_leaves_with_path(params)}


def test_parts_by_parameter_path():
  parts = _parts(_params())
  assert parts["['vit']['encoder']['fc1']['kernel']"] == "vit"
  assert parts["['connector']['fc1']['kernel']"] == "connector"
  for k in ("['embed_tokens']['embedding']", "['lm_head']['kernel']", "['txt_norm']['scale']",
            "['stack']['layers']['txt']['q_proj']['kernel']"):
    assert parts[k] == "text", k
  for k in ("['stack']['layers']['vis']['q_proj']['kernel']",
            "['stack']['layers']['adaln_table']", "['vis_in']['kernel']", "['t_mod']['kernel']"):
    assert parts[k] == "vision", k


def test_unscanned_layers_are_parts_too():  # model.scan_layers=False names layers_<i>
  key = jax.tree_util.DictKey
  path = lambda *names: tuple(key(n) for n in names)  # noqa: E731
  assert optimizer.part_of(path("stack", "layers_3", "txt", "q_proj", "kernel")) == "text"
  assert optimizer.part_of(path("stack", "layers_3", "vis", "q_proj", "kernel")) == "vision"


def test_boxed_params_keep_their_parts():
  boxed = jax.tree.map(lambda x: nn.Partitioned(x, ("a",) + (None,) * (x.ndim - 1)), _params())
  assert set(_parts(boxed).values()) == {"vit", "connector", "text", "vision"}


def _step(config, grads):
  tx, _ = optimizer.make_optimizer(config)
  params = _params()
  updates, state = tx.update(grads, tx.init(params), params)
  return updates, state


def _config(config, **scale):
  config.optim.update(dict(lr=0.1, warmup_steps=0, weight_decay=0.0, clip_norm=1.0,
                           min_lr_ratio=1.0))
  if scale:
    config.optim.lr_scale = scale
  return config


def test_scaled_and_frozen_parts_against_the_plain_optimizer(config):
  rng = np.random.default_rng(0)
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), _params())
  plain, _ = _step(_config(config.copy_and_resolve_references()),
                   {**grads, "vit": jax.tree.map(jnp.zeros_like, grads["vit"])})
  # A huge gradient on the frozen part: zeroed before the clip, so it moves nothing.
  grads["vit"] = jax.tree.map(lambda g: 1e6 * g, grads["vit"])
  got, state = _step(_config(config, vit=0.0, text=0.25), grads)
  parts = _parts(got)
  for (path, u), (_, p) in zip(jax.tree_util.tree_leaves_with_path(got),
                               jax.tree_util.tree_leaves_with_path(plain)):
    part = parts[jax.tree_util.keystr(path)]
    want = {"vit": 0.0, "text": 0.25}.get(part, 1.0) * np.asarray(p)
    np.testing.assert_allclose(u, want, rtol=1e-5, atol=1e-7, err_msg=part)
  # No Adam moments for the frozen part: only the trained leaves carry state.
  n_state = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, "size") and x.ndim)
  n_trained = sum(x.size for k, x in jax.tree_util.tree_leaves_with_path(_params())
                  if parts[jax.tree_util.keystr(k)] != "vit")
  assert n_state == 2 * n_trained


def test_all_ones_is_the_plain_optimizer_state(config):
  plain = jax.tree.structure(optimizer.make_optimizer(_config(config))[0].init(_params()))
  config.optim.lr_scale = {"text": 1.0}
  same = jax.tree.structure(optimizer.make_optimizer(config)[0].init(_params()))
  assert plain == same  # checkpoints written before the key still restore


def test_unknown_part_is_named(config):
  config.optim.lr_scale = {"llm": 0.5}
  with pytest.raises(ValueError, match=r"optim\.lr_scale: unknown part\(s\) \['llm'\].*'text'"):
    optimizer.make_optimizer(config)
