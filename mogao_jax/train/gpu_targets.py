"""GPU targets for ahead-of-time compiles from a host without a GPU (``dry_run_topology="h100"``,
``"h100:8"``, ``"a100:8"``; the flash kernel's compile tests).

JAX compiles for a GPU it does not have through
``jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=<text proto>)``:
the proto is XLA's GpuTargetConfig, of which the device description is enough (XLA keeps full
ones of common GPUs under xla/backends/gpu/target_config/specs/). The numbers below are the data
sheets' (SXM parts): what the compiler reads from them is the compute capability, the shared
memory per block (Triton kernels are refused past it), registers, cores and the memory size.
Needs the CUDA plugin on the host (``pip install -c constraints.txt -e ".[aot]"``: jax-cuda12
plugin + pjrt and the nvidia-cuda-nvcc wheel, whose ptxas the plugin finds by itself).
"""

from __future__ import annotations

import importlib.util
import re

# name -> (device name, compute capability, SMs, shared memory per SM / per block (opt-in),
# L2 bytes, memory bytes, memory bandwidth bytes/s, clock GHz)
_SPECS = {
    "h100": ("NVIDIA H100 80GB HBM3", (9, 0), 132, 233472, 232448, 52428800, 85899345920,
             3352320000000, 1.98),
    "a100": ("NVIDIA A100-SXM4-80GB", (8, 0), 108, 167936, 166912, 41943040, 85899345920,
             2039000000000, 1.41),
}


# XLA options of a deviceless GPU compile: with no GPU to autotune on, XLA's Triton GEMM emitter
# finds no tile sizes for some small dots ("Couldn't find output tile sizes", the tiny model's
# [72, 32] heads); the dry run compiles XLA's own GEMMs as cuBLAS calls instead. Our Pallas
# Triton kernels are unaffected.
COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def parse(name: str) -> tuple[str, int] | None:
  """("h100", 8) for "h100:8", ("h100", 1) for "h100"; None for a name that is no GPU target
  (a TPU slice); a bad GPU count is a ValueError naming the key."""
  m = re.fullmatch(r"([a-z]\d+)(?::(\d+))?", name.lower())
  if not m or m.group(1) not in _SPECS:
    return None
  n = int(m.group(2) or 1)
  if not 1 <= n <= 8:
    raise ValueError(f"dry_run_topology = {name!r}: 1 to 8 GPUs of one host ({n} asked)")
  return m.group(1), n


def target_config(gpu: str) -> str:
  """The GpuTargetConfig text proto of `gpu` (a key of _SPECS)."""
  if gpu not in _SPECS:
    raise ValueError(f"GPU target {gpu!r}: known targets are {sorted(_SPECS)}")
  name, (major, minor), sms, smem_sm, smem_block, l2, mem, bw, ghz = _SPECS[gpu]
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 threads_per_core_limit: 2048
  shared_memory_per_block: 49152 shared_memory_per_core: {smem_sm}
  shared_memory_per_block_optin: {smem_block}
  core_count: {sms} fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  thread_dim_limit_x: 1024 thread_dim_limit_y: 1024 thread_dim_limit_z: 64
  memory_bandwidth: {bw} l2_cache_size: {l2} clock_rate_ghz: {ghz} device_memory_size: {mem}
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  name: "{name}"
}}
platform_name: "CUDA"
device_description_str: "{name}"
"""


def has_cuda_plugin() -> bool:
  return importlib.util.find_spec("jax_cuda12_plugin") is not None


def devices(name: str):
  """The deviceless devices of GPU target `name` ("h100:8"), for jit(...).lower(...).compile()."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  gpu, n = parse(name) or (None, 0)
  if gpu is None:
    raise ValueError(f"dry_run_topology = {name!r}: expected a GPU target such as 'h100',"
                     f" 'h100:8' or 'a100:8' (known: {sorted(_SPECS)})")
  if not has_cuda_plugin():
    raise RuntimeError(
        f"dry_run_topology={name!r}: JAX's CUDA plugin is not installed on this host; install"
        " it with pip install -c constraints.txt -e \".[aot]\"")
  return topologies.get_topology_desc(platform="cuda", topology_name="",
                                      target_config=target_config(gpu),
                                      topology=f"1x1x{n}").devices
