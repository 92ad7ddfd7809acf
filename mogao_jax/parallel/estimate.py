"""Analytic memory per chip for a config at a size too big to compile here.

  python -m mogao_jax.parallel.estimate experiments/mogao_7b_v5p.py 128

Parameters are counted exactly (``jax.eval_shape`` of the model's init: shapes only, nothing is
allocated) and split per device with the config's own ``mesh.rules`` over ``mesh.shape``
resolved for the given device count (no devices needed). Activations are a formula, not a
measurement; it models what dominates in this model and ignores XLA's temporaries, fusion and
collective buffers, so treat it as +-30%, and confirm on the real chip with the dry run
(``--config.dry_run=True``, which reads XLA's compiled memory analysis).

Per device, in bytes:

* state: float32 params + Adam mu + nu + the float32 gradient = 16 bytes per local parameter;
* gathered weights: FSDP all-gathers one layer's weights (both pathways) in the compute dtype,
  counted twice (the layer in use + the next one prefetched);
* saved activations: per layer and token of a microbatch (rows / (batch devices x
  grad_accum_steps)), what the remat policy keeps for the backward pass: ``full`` the layer
  input; ``dots`` also every weight matmul's output (q, k, v, o, gate, up, down); ``none`` also
  the attention probabilities and the MLP's elementwise intermediates; head and MLP dimensions
  split over the tensor axis;
* transient: one layer recomputed in the backward pass (its attention scores and probabilities
  in float32: dense attention runs as plain XLA, [heads, L, L] per row; blockwise / flash hold
  [heads, L, attention_block]) and the float32 logits with their softmax and gradient
  ([l_txt, vocab / tensor] per row);
* the SigLIP tower (``model.vit = "siglip"``) is not rematted: all its layers' activations and
  attention probabilities are kept, for its image batch of ``batch.vit_capacity`` images per
  row, ``vit_grid``**2 patches each, attending within each image (model/vit.py).
"""

from __future__ import annotations

import math
import sys

import flax.linen as nn
import jax
import numpy as np

from mogao_jax import config_args
from mogao_jax.data import batch as batch_lib
from mogao_jax.parallel import mesh as mesh_lib
from mogao_jax.parallel import rules as rules_lib
from mogao_jax.model.mogao import Mogao

GIB = 2**30


def _ways(axes, sizes) -> int:
  names = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return math.prod(sizes[a] for a in names)


def parameter_split(config, num_devices: int) -> dict:
  """Exact parameter count, per-device parameter count and replicated count under the config's
  rules on ``mesh.shape`` resolved for ``num_devices`` (shapes only; no devices, no compile)."""
  names, sizes = mesh_lib.resolve_mesh_shape(config.mesh.shape, num_devices)
  sizes = dict(zip(names, sizes))
  rules = list(rules_lib.make_rules(config))
  model = Mogao.from_config(config)
  batch = batch_lib.example_batch(config, batch_size=1)
  vis_t = np.ones(batch["vis_kind"].shape, np.float32)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), batch_lib.model_inputs(batch),
                                            vis_t)["params"])
  logical = nn.get_partition_spec(boxed)
  shapes = nn.unbox(boxed)
  flat_s = jax.tree.leaves(shapes)
  flat_l = jax.tree.leaves(logical, is_leaf=lambda x: x is None or
                           isinstance(x, jax.sharding.PartitionSpec))
  total = local = replicated = 0
  layer_params = 0  # parameters of one scanned layer (both pathways), for the FSDP gather
  for s, lg in zip(flat_s, flat_l):
    n = math.prod(s.shape)
    spec = tuple(nn.logical_to_mesh_axes(tuple(lg or ()), rules)) if lg else ()
    spec = spec + (None,) * (len(s.shape) - len(spec))
    per = math.prod(-(-d // _ways(a, sizes)) for d, a in zip(s.shape, spec))
    total, local = total + n, local + per
    replicated += n if (per == n and num_devices > 1) else 0
    if lg and lg[0] == "layers":
      layer_params += n // s.shape[0]
  return dict(mesh=sizes, params=total, params_per_device=local, replicated=replicated,
              replicated_fraction=replicated / total, layer_params=layer_params)


def memory_per_device(config, num_devices: int) -> dict:
  """GiB per device by component (see the module docstring), and the parameter counts."""
  split = parameter_split(config, num_devices)
  sizes, m, d = split["mesh"], config.model, config.data
  act = np.dtype(m.dtype).itemsize
  rules = list(rules_lib.make_rules(config))
  batch_axes = nn.logical_to_mesh_axes(("batch",), rules)[0]
  tensor = _ways(nn.logical_to_mesh_axes(("heads",), rules)[0], sizes)
  k = int(config.train.get("grad_accum_steps", 1))  # validated by the trainer
  rows = d.batch_size / (_ways(batch_axes, sizes) * k)  # rows per device per microbatch
  seq = d.l_txt + d.l_vis  # both streams run through every layer (joint attention)
  heads_w = m.num_heads * m.head_dim / tensor
  kv_w = m.num_kv_heads * m.head_dim / tensor
  mlp_w = m.mlp_dim / tensor
  per_token = {  # bytes saved per token per layer, by remat policy
      "full": m.width * act,
      "dots": (2 * m.width + heads_w + 2 * kv_w + m.width + 3 * mlp_w) * act,
  }
  # One row's float32 attention probabilities: all L x L (dense) or a block of keys at a time.
  keys = seq if m.get("attention", "dense") == "dense" else min(seq, m.get("attention_block", 128))
  probs = m.num_heads / tensor * seq * keys * 4
  per_token["none"] = per_token["dots"] + (2 * mlp_w + 4 * m.width) * act + probs / seq
  saved = rows * seq * per_token[m.remat] * m.depth
  transient = rows * (3 * probs + seq * (per_token["none"] - probs / seq))  # one layer again
  vocab = m.vocab_size / _ways(nn.logical_to_mesh_axes(("vocab",), rules)[0], sizes)
  logits = rows * d.l_txt * vocab * 4 * 3
  vit = 0.0
  if m.get("vit", "tiny") == "siglip":
    n = m.vit_grid * m.vit_grid
    images = batch_lib.config_vit_capacity(config)
    vit_probs = images * m.vit_heads * n * n * 4  # one row's images' float32 probabilities
    vit = rows * m.vit_depth * (images * n * (6 * m.vit_width + 2 * m.vit_mlp_dim) * act
                                + 2 * vit_probs)
  out = dict(
      state=16 * split["params_per_device"],
      gathered_weights=2 * split["layer_params"] * act,
      saved_activations=saved, transient=transient, logits=logits, vit_activations=vit)
  gib = {key: v / GIB for key, v in out.items()}
  gib["total"] = sum(gib.values())
  return dict(split, rows_per_device=rows, gib=gib)


class MemoryFitError(ValueError):
  """The estimate exceeds the device memory; the message names the keys to change."""


def _fixes(config, est: dict) -> list[str]:
  """The config keys that would lower the estimate, for the error."""
  m, g = config.model, est["gib"]
  out = []
  if m.remat != "full":
    out.append(f"model.remat='full' (now {m.remat!r}: saved activations "
               f"{g['saved_activations']:.1f} GiB)")
  if m.dtype == "float32":
    out.append("model.dtype='bfloat16' (activations and gathered weights in half)")
  if m.get("attention", "dense") == "dense":
    out.append(f"model.attention='blockwise' (dense holds [heads, L, L] per row: transient "
               f"{g['transient']:.1f} GiB)")
  if est["rows_per_device"] > 1:
    out.append(f"data.batch_size or train.grad_accum_steps ({est['rows_per_device']:g} rows "
               "per device per microbatch)")
  if est["mesh"].get("fsdp", 1) < math.prod(est["mesh"].values()):
    out.append(f"mesh.shape (mesh {est['mesh']}: shard the weights over more devices, fsdp=-1)")
  if not config.train.get("offload_opt_state", False):
    out.append(f"train.offload_opt_state=True (Adam state to host: state {g['state']:.1f} GiB)")
  out.append("optim.lr_scale (0 freezes a part: e.g. vit=0)")
  out.append("data.l_txt / data.l_vis / model.vit_images (shorter rows, fewer images)")
  return out


def check_fits(config, num_devices: int, device_gib: float | None) -> dict | None:
  """The estimate for `num_devices`; MemoryFitError naming the keys to change when it exceeds
  `device_gib`. None (no estimate made: it costs an abstract init) when `device_gib` is None
  or <= 0, i.e. nothing to compare with."""
  if not device_gib or device_gib <= 0:
    return None
  est = memory_per_device(config, num_devices)
  total = est["gib"]["total"]
  if total > device_gib:
    fixes = "\n  ".join(_fixes(config, est))
    raise MemoryFitError(
        f"the step needs about {total:.1f} GiB per device (parallel/estimate.py, +-30%) but a "
        f"device has {device_gib:.1f} GiB (mesh.device_memory_gib, 0 = the device's own): it "
        f"will not fit. Change:\n  {fixes}\n({format_estimate(est)})\n"
        "mesh.device_memory_gib=-1 skips this check.")
  return est


def format_estimate(est: dict) -> str:
  g = est["gib"]
  lines = [f"mesh {est['mesh']}: {est['params'] / 1e9:.2f}B parameters,",
           f"{est['params_per_device'] / 1e6:.1f}M per device, "
           f"{est['replicated_fraction']:.2%} replicated; "
           f"{est['rows_per_device']:g} rows per device per microbatch"]
  lines += [f"  {key:<18} {v:8.2f} GiB" for key, v in g.items()]
  return "\n".join(lines)


def main(argv) -> None:
  path, n = argv[1], int(argv[2])
  config = config_args.load_experiment(path).get_config()
  print(format_estimate(memory_per_device(config, n)))


if __name__ == "__main__":
  main(sys.argv)
