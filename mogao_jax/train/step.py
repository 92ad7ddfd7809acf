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
import ml_collections
import numpy as np
import optax

from mogao_jax.data import batch as batch_lib
from mogao_jax.data.batch import Kind
from mogao_jax.model import flow
from mogao_jax.model.config import ModelConfig
from mogao_jax.model.mogao import Mogao, copy_text_to_vision
from mogao_jax.train.state import TrainState


def make_model(config: ml_collections.ConfigDict) -> Mogao:
  return Mogao(ModelConfig.from_config(config.model))


def example_batch(config: ml_collections.ConfigDict, batch_size: int | None = None) -> dict:
  """An all-padding batch with the configured shapes (for init and shape inference)."""
  d, m = config.data, config.model
  row = batch_lib.empty_row(d.l_txt, d.l_vis, m.patch_dim, m.latent_dim)
  n = batch_size or d.batch_size
  return {k: np.zeros((n,) + v.shape, v.dtype) for k, v in row.items()}


def _init_boxed(config, model, tx, rng, batch) -> TrainState:
  """The initial state with nn.Partitioned boxes (logical axis names) still on the params."""
  p_rng, s_rng = jax.random.split(rng)
  vis_t = jnp.ones(batch["vis_kind"].shape, jnp.float32)
  params = model.init(p_rng, batch_lib.model_inputs(batch), vis_t)["params"]
  if config.model.vision_init == "copy_text":
    params = copy_text_to_vision(params)
  elif config.model.vision_init != "scratch":
    raise ValueError(f"model.vision_init must be 'copy_text' or 'scratch', "
                     f"got {config.model.vision_init!r}")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=s_rng)


def state_logical_specs(config, model, tx, batch) -> TrainState:
  """A TrainState-shaped tree of logical PartitionSpecs (unannotated leaves: replicated)."""
  abstract = jax.eval_shape(functools.partial(_init_boxed, config, model, tx),
                            jax.random.key(0), batch)
  return nn.get_partition_spec(abstract)


def init_state(config, model, tx, rng, batch) -> TrainState:
  return nn.unbox(_init_boxed(config, model, tx, rng, batch))


def draw_noise(rng, batch, flow_cfg):
  """One t per (row, image id) and Gaussian noise per vision slot."""
  b, l_vis, c = batch["vis_latent"].shape
  n_ids = batch["txt_kind"].shape[1] + l_vis + 1  # a row holds fewer images than slots
  t_rng, n_rng = jax.random.split(rng)
  t_BN = flow.sample_t(t_rng, (b, n_ids), flow_cfg.logit_mean, flow_cfg.logit_std,
                       flow_cfg.shift)
  return t_BN, jax.random.normal(n_rng, (b, l_vis, c), jnp.float32)


def apply_noise(batch, t_BN, noise_BVC):
  """Model inputs with NVAE slots noised to x_t, each slot's t (1 on clean slots), target v."""
  is_nvae = batch["vis_kind"] == Kind.NVAE
  t_BV = jnp.where(is_nvae, jnp.take_along_axis(t_BN, batch["vis_image"], axis=1), 1.0)
  x1 = batch["vis_latent"]
  x_t = jnp.where(is_nvae[..., None], flow.interpolate(x1, noise_BVC, t_BV[..., None]), x1)
  inputs = {**batch_lib.model_inputs(batch), "vis_latent": x_t}
  return inputs, t_BV, flow.velocity_target(x1, noise_BVC)


def per_slot_losses(model, params, batch, t_BN, noise_BVC):
  """Unweighted next-token CE per text slot [B, T] and squared velocity error per vision slot
  (mean over channels) [B, V]."""
  inputs, t_BV, v_target = apply_noise(batch, t_BN, noise_BVC)
  logits_BTV, v_pred_BVC = model.apply({"params": params}, inputs, t_BV)
  ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch["txt_target"])
  se_BV = jnp.mean(jnp.square(v_pred_BVC - v_target), axis=-1)
  return ce_BT, se_BV


def loss_fn(params, model, batch, t_BN, noise_BVC, loss_cfg):
  """Both losses normalised by the GLOBAL count of loss tokens.

  Under jit the batch is one global array sharded over devices, so these sums and counts are
  over all devices (XLA inserts the all-reduces): a token-weighted mean, not a mean of
  per-device means.
  """
  ce_BT, se_BV = per_slot_losses(model, params, batch, t_BN, noise_BVC)
  w_txt, w_vis = batch["txt_loss_w"], batch["vis_loss_w"]
  n_txt, n_img = jnp.sum(w_txt), jnp.sum(w_vis)
  text_loss = jnp.sum(ce_BT * w_txt) / jnp.maximum(n_txt, 1.0)
  flow_loss = jnp.sum(se_BV * w_vis) / jnp.maximum(n_img, 1.0)
  loss = loss_cfg.text_weight * text_loss + loss_cfg.image_weight * flow_loss
  n_real = (jnp.sum(batch["txt_segment"] > 0) + jnp.sum(batch["vis_segment"] > 0))
  metrics = dict(loss=loss, text_loss=text_loss, flow_loss=flow_loss, n_text_tokens=n_txt,
                 n_image_tokens=n_img, n_real_tokens=n_real.astype(jnp.float32))
  return loss, metrics


def make_train_step(config, model, tx):
  """train_step(state, batch) -> (state, metrics); jit it with shardings in the loop."""
  flow_cfg, loss_cfg = config.flow, config.loss

  def train_step(state: TrainState, batch: dict):
    # fold_in keeps the noise of step k a pure function of (seed, k): exact resume for free.
    t_BN, noise_BVC = draw_noise(jax.random.fold_in(state.rng, state.step), batch, flow_cfg)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, model, batch, t_BN, noise_BVC, loss_cfg)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step
