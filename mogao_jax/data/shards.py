"""Logical data shards: one global data stream for any process count.

The global batch of `data.batch_size` rows is `S = data.num_shards` blocks of `R = B / S`
consecutive rows; block s always comes from data shard s, an independent deterministic stream
(its own slice of every source, shuffle, packer and state). A process builds the shards whose
rows its devices hold, in row order, so global batch N is the same documents whether 1, 2 or 4
processes read it, and a saved position (one state per shard) can be dealt out again over
another process count. The packers' counters travel in the shard states, so the global
`data/*` counters are sums over shards.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import grain
import numpy as np

DEFAULT_MAX_SHARDS = 16  # data.num_shards = 0: gcd(batch_size, 16) streams


def num_shards(d) -> int:
  """config.data.num_shards (0 = gcd(batch_size, 16)), checked against the batch size."""
  s = int(d.get("num_shards", 0) or 0) or math.gcd(d.batch_size, DEFAULT_MAX_SHARDS)
  if s < 1 or d.batch_size % s:
    raise ValueError(f"config.data.num_shards={s} must divide config.data.batch_size="
                     f"{d.batch_size} (each data shard fills the same number of rows)")
  return s


def process_shards(d, process_index: int, process_count: int) -> list[int]:
  """The shards of a process that holds the process_index-th contiguous block of rows."""
  s = num_shards(d)
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index={process_index} for process_count={process_count}")
  if d.batch_size % process_count:
    raise ValueError(f"config.data.batch_size={d.batch_size} is not divisible by the "
                     f"process count {process_count}")
  if s % process_count:
    raise ValueError(f"config.data.num_shards={s} is not a multiple of the process count "
                     f"{process_count}: every process must build whole data shards (set "
                     "config.data.num_shards to a multiple of every process count you use)")
  per = s // process_count
  return list(range(process_index * per, (process_index + 1) * per))


def shards_of_rows(d, rows: Sequence[int]) -> list[int]:
  """The shards whose rows are exactly `rows` (a process's global batch rows, sorted)."""
  s = num_shards(d)
  r = d.batch_size // s
  shards = sorted({row // r for row in rows})
  if list(rows) != [row for k in shards for row in range(k * r, (k + 1) * r)]:
    raise ValueError(f"this process holds batch rows {list(rows)[:8]}..., which are not whole "
                     f"data shards of {r} rows (config.data.num_shards={s}); choose a "
                     "num_shards whose row blocks fall on the process boundaries")
  return shards


def local_rows(sharding, batch_size: int) -> list[int]:
  """The global batch rows this process's devices hold under `sharding`, sorted (the order
  of jax.make_array_from_process_local_data's local data)."""
  index = sharding.addressable_devices_indices_map((batch_size,))
  return sorted({r for sl in index.values() for r in range(*sl[0].indices(batch_size))})


def merge_stats(stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Packer counters summed over shards (or processes); the first example of each issue."""
  out: dict[str, Any] = {}
  for st in stats:
    for k, v in st.items():
      if k == "issue_examples":
        out.setdefault(k, {})
        for reason, where in v.items():
          out[k].setdefault(reason, where)
      elif isinstance(v, dict):
        acc = out.setdefault(k, {})
        for name, n in v.items():
          acc[name] = acc.get(name, 0) + n
      elif k != "efficiency":
        out[k] = out.get(k, 0) + v
  return out


class ShardZip(grain.IterDataset):
  """The local batch: the next batch of every owned shard (each of R rows), concatenated in
  shard order. State: {"pipeline": header, "shards": {shard: its state}}."""

  def __init__(self, parents: Sequence[grain.IterDataset], shards: Sequence[int],
               header: dict[str, Any]):
    super().__init__(list(parents))
    self._shards, self._header = list(shards), header

  def __iter__(self):
    return ShardZipIterator([p.__iter__() for p in self._parents], self._shards, self._header)

  def __str__(self) -> str:
    return f"ShardZip(shards={self._shards}, {self._header})"


class ShardZipIterator(grain.DatasetIterator):

  def __init__(self, parents, shards: Sequence[int], header: dict[str, Any]):
    super().__init__(list(parents))
    self._shards, self._header = list(shards), header

  def __next__(self):
    batches = [next(p) for p in self._parents]
    if len(batches) == 1:
      return batches[0]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  def get_state(self) -> dict[str, Any]:
    return {"pipeline": self._header,
            "shards": {str(s): p.get_state() for s, p in zip(self._shards, self._parents)}}

  def set_state(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
    """`state`: this iterator's state, or every process's (a checkpoint's list): the owned
    shards' states are taken from whichever process saved them."""
    saved = {}
    for one in state if isinstance(state, list) else [state]:
      self._check(one)
      saved.update(one["shards"])
    missing = [s for s in self._shards if str(s) not in saved]
    if missing:
      raise ValueError(f"data iterator state holds data shards {sorted(map(int, saved))}, "
                       f"but this process builds {missing} too; the checkpoint is incomplete")
    for s, p in zip(self._shards, self._parents):
      p.set_state(saved[str(s)])

  def _check(self, state) -> None:
    saved = state.get("pipeline") if isinstance(state, dict) else None
    if saved is None or "shards" not in state:
      raise ValueError(
          "data iterator state was saved by an older pipeline (per process, before the global"
          " data shards), so its position cannot be carried over (use a fresh workdir, or "
          "init.params_from to keep the weights)")
    ours = self._header
    for key in ("sources", "split", "num_shards"):
      a, b = _norm(saved.get(key)), _norm(ours[key])
      if a != b:
        raise ValueError(f"data iterator state was saved for {key} {a}, but this run has {b}; "
                         "a position is only valid for the same sources, weights and data "
                         "shards (use a fresh workdir, or init.params_from to keep the weights)")


def _norm(x):
  return json.loads(json.dumps(x))


def find_all(iterator: grain.DatasetIterator, cls: type) -> list[Any]:
  """Every iterator of type `cls` in the graph above `iterator`, in shard order."""
  found, todo = [], [iterator]
  while todo:
    it = todo.pop(0)
    if isinstance(it, cls):
      found.append(it)
    else:
      todo.extend(getattr(it, "_parents", ()))
  return found
