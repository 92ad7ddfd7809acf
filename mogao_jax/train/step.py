"""The jitted ECTF train step: joint next-token CE + flow-matching MSE, globally normalised.

Every generation image appears in its row as a clean copy (CVAE/VIT, read by later tokens) and a
noisy copy (NVAE, read by nobody else), so one forward pass trains every image and every text
span of a document (MOGAO.md section 5). The step draws one t per image and fresh noise per slot.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mogao_jax.data import batch as batch_lib
from mogao_jax.model import flow
from mogao_jax.model.mogao import copy_text_to_vision
from mogao_jax.train.state import TrainState


def _init_boxed(config, model, tx, rng, batch) -> TrainState:
  """The initial state with nn.Partitioned boxes (logical axis names) still on the params."""
  p_rng, s_rng = jax.random.split(rng)
  vis_t = jnp.ones(batch["vis_kind"].shape, jnp.float32)
  params = model.init(p_rng, batch_lib.model_inputs(batch), vis_t)["params"]
  if config.model.vision_init == "copy_text":  # else "scratch" (config_schema checks)
    params = copy_text_to_vision(params)
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, opt_state=_unbox_empty(tx.init(params)),
                    rng=s_rng, ema=params if ema_decay(config) else None, nan_run=zero,
                    nan_total=zero)


def _unbox_empty(tree):
  """Boxes holding no array (optax.masked's MaskedNode: a part another transform of
  optax.multi_transform owns, e.g. a frozen part's) lose their box, so the logical specs
  (nn.get_partition_spec) and the unboxed state have the same structure."""
  empty = lambda x: isinstance(x, nn.Partitioned) and not jax.tree.leaves(x.value)  # noqa: E731
  return jax.tree.map(lambda x: x.value if empty(x) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def ema_decay(config) -> float:
  """``train.ema_decay`` (0 = no EMA; its range: config_schema)."""
  return float(config.train.get("ema_decay", 0.0) or 0.0)


def abstract_key() -> jax.ShapeDtypeStruct:
  """The shape of a PRNG key, made without a concrete array: under a mesh of devices this
  host cannot run (a TPU topology compiled ahead of time), a concrete key would need one."""
  return jax.eval_shape(lambda: jax.random.key(0))


def state_logical_specs(config, model, tx, batch) -> TrainState:
  """A TrainState-shaped tree of logical PartitionSpecs (unannotated leaves: replicated)."""
  abstract = jax.eval_shape(functools.partial(_init_boxed, config, model, tx),
                            abstract_key(), batch)
  return nn.get_partition_spec(abstract)


def init_state(config, model, tx, rng, batch) -> TrainState:
  return nn.unbox(_init_boxed(config, model, tx, rng, batch))


def per_slot_losses(model, params, batch, t_BN, noise_BVC):
  """Unweighted next-token CE per text slot [B, T] and squared velocity error per vision slot
  (mean over channels) [B, V]."""
  inputs, t_BV, v_target = flow.apply_noise(batch, t_BN, noise_BVC)
  logits_BTV, v_pred_BVC = model.apply({"params": params}, inputs, t_BV)
  ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch["txt_target"])
  se_BV = jnp.mean(jnp.square(v_pred_BVC - v_target), axis=-1)
  return ce_BT, se_BV


def loss_fn(params, model, batch, t_BN, noise_BVC, loss_cfg, counts=None):
  """Both losses normalised by the GLOBAL count of loss tokens.

  Under jit the batch is one global array sharded over devices, so these sums and counts are
  over all devices (XLA inserts the all-reduces): a token-weighted mean, not a mean of
  per-device means. ``counts`` = (text, image) loss-token counts of the whole global batch when
  ``batch`` is one microbatch of it (gradient accumulation): the microbatch losses then add up
  to the full batch's loss exactly.

  The text loss is a WEIGHTED MEAN, sum(ce * w) / sum(w), and n_text_tokens is sum(w), not a
  count: with data.text_loss_weights (data/encoding.py) a role weighing 0 contributes exactly
  nothing (its w is 0, as padding's), but down-weighting one role raises the gradient of every
  other text token by sum(w before) / sum(w after), since the text loss keeps its scale against
  the flow loss (loss.text_weight sets that). Roles only redistribute the text loss.
  """
  ce_BT, se_BV = per_slot_losses(model, params, batch, t_BN, noise_BVC)
  w_txt, w_vis = batch["txt_loss_w"], batch["vis_loss_w"]
  n_txt, n_img = loss_counts(batch) if counts is None else counts
  text_loss = jnp.sum(ce_BT * w_txt) / jnp.maximum(n_txt, 1.0)
  flow_loss = jnp.sum(se_BV * w_vis) / jnp.maximum(n_img, 1.0)
  loss = loss_cfg.text_weight * text_loss + loss_cfg.image_weight * flow_loss
  n_real = (jnp.sum(batch["txt_segment"] > 0) + jnp.sum(batch["vis_segment"] > 0))
  metrics = dict(loss=loss, text_loss=text_loss, flow_loss=flow_loss, n_text_tokens=n_txt,
                 n_image_tokens=n_img, n_real_tokens=n_real.astype(jnp.float32))
  return loss, metrics


def loss_counts(batch):
  """(text, image) loss-token counts: the denominators of loss_fn."""
  return jnp.sum(batch["txt_loss_w"]), jnp.sum(batch["vis_loss_w"])


def grad_accum_steps(config) -> int:
  """``train.grad_accum_steps`` (default 1 = off; its range: config_schema)."""
  return int(config.train.get("grad_accum_steps", 1))


def _microbatches(tree, k: int):
  """[B, ...] leaves -> [k, B/k, ...], microbatch j = rows j, j+k, j+2k, ...

  Strided, not contiguous: with the batch sharded in contiguous blocks over devices, every
  device then holds its share of every microbatch, so each microbatch runs on all devices
  with no data movement (contiguous slices would put microbatch 0 on the first devices only).
  """
  def split(x):
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))
  return jax.tree.map(split, tree)


def accumulated_grads(params, model, batch, t_BN, noise_BVC, loss_cfg, k: int):
  """(metrics, grads) of loss_fn over the whole batch, computed in k microbatches.

  A lax.scan over microbatches keeps one microbatch's activations alive at a time. Each
  microbatch's losses are divided by the global token counts, so the sums over microbatches are
  the globally normalised loss and its gradient (not a mean of per-microbatch means).
  """
  b = batch["txt_kind"].shape[0]
  if b % k:
    raise ValueError(f"data.batch_size = {b} (rows per step) is not divisible by"
                     f" train.grad_accum_steps = {k}")
  counts = loss_counts(batch)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  sums = ("loss", "text_loss", "flow_loss", "n_real_tokens")

  def body(carry, mb):
    g_acc, m_acc = carry
    mb_batch, mb_t, mb_noise = mb
    (_, m), g = grad_fn(params, model, mb_batch, mb_t, mb_noise, loss_cfg, counts)
    g_acc = jax.tree.map(jnp.add, g_acc, g)
    return (g_acc, {key: m_acc[key] + m[key] for key in sums}), None

  zeros = (jax.tree.map(jnp.zeros_like, params), {key: jnp.zeros((), jnp.float32) for key in sums})
  (grads, metrics), _ = jax.lax.scan(body, zeros, _microbatches((batch, t_BN, noise_BVC), k))
  metrics.update(n_text_tokens=counts[0], n_image_tokens=counts[1])
  return metrics, grads


def _guarded_update(state: TrainState, ok, params, opt_state, decay: float) -> TrainState:
  """The NaN guard: where ``ok`` is False keep the old params / optimizer state / EMA.

  A select, not a cond: both branches are cheap and a select keeps the step one straight-line
  program whose buffers can be donated.
  """
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
  ema = state.ema
  if ema is not None:
    ema = keep(jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params), ema)
  skipped = jnp.logical_not(ok).astype(jnp.int32)
  return state.replace(
      step=state.step + 1, params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state), ema=ema,
      nan_run=jnp.where(ok, 0, state.nan_run + 1), nan_total=state.nan_total + skipped)


def offload_opt_state(config, shardings: TrainState):
  """(state shardings, optimizer-state device shardings or None) for ``train.offload_opt_state``.

  With it on, the optimizer state lives in pinned host memory between steps (its shardings get
  memory_kind="pinned_host") and the step moves it to the devices for the update and back, so
  device memory holds Adam's two moments only during the update. Off: unchanged, None.
  """
  if not config.train.get("offload_opt_state", False):
    return shardings, None
  host = jax.tree.map(lambda s: s.with_memory_kind("pinned_host"), shardings.opt_state)
  return shardings.replace(opt_state=host), shardings.opt_state


def make_train_step(config, model, tx, opt_device_shardings=None):
  """train_step(state, batch) -> (state, metrics); jit it with shardings in the loop.

  ``opt_device_shardings`` (from offload_opt_state): the optimizer state arrives in host
  memory and is moved onto these device shardings for the update.

  ``train.grad_accum_steps`` = k > 1 computes the gradient in k microbatches of the global
  batch (accumulated_grads) and still makes one optimizer update per step.
  A non-finite loss or gradient norm skips the update (step still advances: the batch was
  consumed); metrics ``skipped`` (0/1) and ``nan_run`` (consecutive skips) report it.
  """
  flow_cfg, loss_cfg, decay = config.flow, config.loss, ema_decay(config)
  k = grad_accum_steps(config)

  def train_step(state: TrainState, batch: dict):
    if opt_device_shardings is not None:
      state = state.replace(opt_state=jax.device_put(state.opt_state, opt_device_shardings))
    # fold_in keeps the noise of step k a pure function of (seed, k): exact resume for free.
    t_BN, noise_BVC = flow.draw_noise(jax.random.fold_in(state.rng, state.step), batch, flow_cfg)
    if k == 1:
      grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
      (_, metrics), grads = grad_fn(state.params, model, batch, t_BN, noise_BVC, loss_cfg)
    else:  # noise drawn for the whole batch above: k microbatches see what k = 1 would
      metrics, grads = accumulated_grads(state.params, model, batch, t_BN, noise_BVC,
                                         loss_cfg, k)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    state = _guarded_update(state, ok, params, opt_state, decay)
    metrics.update(skipped=jnp.logical_not(ok).astype(jnp.float32), nan_run=state.nan_run)
    return state, metrics

  return train_step
