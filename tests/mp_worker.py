"""One process of the multi-process step check (tests/test_multiprocess.py).

python tests/mp_worker.py PROCESS_ID NUM_PROCESSES COORDINATOR DEVICES_PER_PROCESS OUT_JSON
Runs three train steps of the tiny config on a (data 2, fsdp 2, tensor 2) mesh spread over all
processes' devices and writes process 0's losses to OUT_JSON.
"""

import json
import os
import sys

pid, nproc, coord, ndev, out = sys.argv[1:6]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ndev}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402

if int(nproc) > 1:
  jax.distributed.initialize(coord, int(nproc), int(pid))

from tests import shardkit  # noqa: E402
from tests.configs import tiny_config  # noqa: E402

config = tiny_config()
config.model.num_kv_heads = 2
config.mesh.shape = ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2})
batches = shardkit.global_batches(config, 3, os.path.dirname(out))
history, _ = shardkit.run_steps(config, batches)
if jax.process_index() == 0:
  with open(out, "w") as f:
    json.dump({"history": history, "processes": jax.process_count(),
               "devices": jax.device_count()}, f)
