"""The flash kernel and the train step compiled ahead of time for GPUs from this CPU host
(deviceless, train/gpu_targets.py; ptxas checks shared memory and registers). Needs the `.[aot]`
extra (JAX's CUDA plugin + the nvidia-cuda-nvcc wheel): .ci/run installs it in .venv-aot;
elsewhere these tests are skipped with the reason.

Kernels: forward + both backward kernels (dq, dk/dv) through the model's entry point
(attention.flash_attention, the platform dispatch) for H100 (sm_90) and A100 (sm_80), bf16 and
f32, GQA (4 query heads over 2 kv heads), head_dim 64 and 128, 200 slots (not a multiple of
the 128 block). The lowered module holds the three Triton calls and no interpret-mode loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mogao_jax.model import attention
from mogao_jax.train import dry_run, gpu_targets
from tests import test_flash as tf
from tests.configs import tiny_config

pytestmark = [pytest.mark.aot, pytest.mark.skipif(
    not gpu_targets.has_cuda_plugin(),
    reason="JAX's CUDA plugin not installed: pip install -c constraints.txt -e '.[test,aot]'"
           " (.ci/run)")]

L, B, H, K = 200, 2, 4, 2
TRITON = "__gpu$xla.gpu.triton"


def _rows():
  """Two rows of 200 slots: the mixed test rows (88 slots) then a 112-slot text document."""
  meta = tf._meta("mixed")
  b, l = meta["segment"].shape
  n = L - l
  seg = jnp.full((b, n), 9, jnp.int32)
  t = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  tail = {"segment": seg, "kind": jnp.zeros_like(seg) + int(tf.Kind.TXT),
          "image": jnp.zeros_like(seg), "pos": jnp.stack([t, 0 * t, 0 * t], -1)}
  return {f: jnp.concatenate([meta[f], tail[f]], axis=1) for f in meta}


@functools.lru_cache(maxsize=None)
def _device(gpu):
  return gpu_targets.devices(gpu)[0]


@pytest.mark.parametrize("gpu", ["h100", "a100"])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_kernels_compile_for_gpu(gpu, d, dtype):
  meta = _rows()
  sharding = jax.sharding.SingleDeviceSharding(_device(gpu))
  spec = lambda n: jax.ShapeDtypeStruct((B, L, n, d), dtype, sharding=sharding)  # noqa: E731

  def loss(q, k, v):
    out = attention.flash_attention(q, k, v, meta, meta, other=tf.OTHER, same=tf.SAME)
    return out.astype(jnp.float32).sum()

  lowered = jax.jit(jax.grad(loss, (0, 1, 2))).trace(spec(H), spec(K), spec(K)).lower()
  text = lowered.as_text()
  assert text.count(TRITON) == 3, "forward, dq, dk/dv: one Triton call each"
  assert "stablehlo.while" not in text  # the interpret-mode emulation is a while loop
  compiled = lowered.compile()  # ptxas: shared memory and registers fit
  assert compiled.memory_analysis().temp_size_in_bytes > 0


def test_cpu_lowering_is_the_interpret_mode():
  """The same function lowered for the CPU holds no Triton call (the default branch)."""
  meta = _rows()
  x = jnp.zeros((B, L, H, 64), jnp.float32)
  f = jax.jit(lambda q: attention.flash_attention(q, q, q, meta, meta, other=tf.OTHER,
                                                  same=tf.SAME))
  text = f.trace(x).lower().as_text()
  assert TRITON not in text and "stablehlo.while" in text


def test_train_step_with_flash_compiles_for_h100():
  c = tiny_config()
  c.model.attention = "flash"
  c.dry_run_topology = "h100"
  out = dry_run.run(c)
  assert out["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
  assert 0 < out["peak_gib"] < 1  # (the GPU backend's cost analysis reports no FLOPs)
  assert out["hbm_gib"] == 80 and np.isclose(out["peak_of_hbm"], out["peak_gib"] / 80)
