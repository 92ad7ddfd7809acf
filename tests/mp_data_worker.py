"""One process of the multi-process data check (tests/test_multiprocess.py).

python tests/mp_data_worker.py PROCESS_ID NUM_PROCESSES COORDINATOR SOURCE_SPEC OUT_DIR
Under jax.distributed, reads this process's data shards of SOURCE_SPEC (one pass over its document
ids) and assembles two global batches with the trainer's make_array_from_process_local_data;
writes OUT_DIR/ids_<process>.json and, on process 0, the global batch shapes.
"""

import json
import os
import sys

pid, nproc, coord, spec, out = sys.argv[1:6]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.distributed.initialize(coord, int(nproc), int(pid))

from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from mogao_jax.data import pipeline  # noqa: E402
from mogao_jax.data import records  # noqa: E402
from mogao_jax.data import shards  # noqa: E402
from mogao_jax.data.sources import specs as specs_lib  # noqa: E402
from mogao_jax.train import loop  # noqa: E402
from tests.configs import tiny_config  # noqa: E402

config = tiny_config()
config.data.source = spec
me, n = jax.process_index(), jax.process_count()
n_records = len(specs_lib.open_source(specs_lib.mixture(config.data)[0]))
n_shards = shards.num_shards(config.data)
ids = []
for s in shards.process_shards(config.data, me, n):
  docs = pipeline.mixed_documents(config, shard=s, num_shards=n_shards)
  shard_len = len(range(s, n_records, n_shards))  # the stream repeats: one epoch = its records
  ids += [docs[i].meta.get(records.ID) for i in range(shard_len)]
with open(os.path.join(out, f"ids_{me}.json"), "w") as f:
  json.dump(ids, f)

tok = pipeline.make_tokenizer(config, os.path.join(out, f"tok_{me}"))
it = pipeline.make_pipeline(config, tok, process_index=me, process_count=n)
mesh = jax.make_mesh((jax.device_count(),), ("data",))
sharding = NamedSharding(mesh, P("data"))
shapes = []
for _ in range(2):
  g = loop._to_global(next(it), sharding)
  shapes.append(list(g["txt_token"].shape))
  assert g["txt_token"].is_fully_addressable is False
if me == 0:
  with open(os.path.join(out, "global.json"), "w") as f:
    json.dump({"shapes": shapes, "devices": jax.device_count()}, f)
