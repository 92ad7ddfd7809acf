"""The Grain graph: world documents -> shard by process -> shuffle -> ECTF -> pack -> batch.

  MapDataset.range(N) -> [process_index::process_count] -> shuffle(seed) -> map(make document)
  -> repeat -> to_iter_dataset -> map(tokenise + ECTF) -> PackIterDataset -> batch

Document i of a split is a pure function of (config.seed, split, i), so the stream needs no
files, and each process reads a disjoint set of indices. The iterator state is plain JSON
(`state_to_json` / `state_from_json`), for the checkpoint.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from absl import flags
import grain
import numpy as np

from mogao_jax.data import packing
from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.data.sources import world

_NUM_INDICES = 2**31 - 1  # "infinite": documents are procedural, indices never repeat in practice
_SPLITS = {"train": 0, "eval": 1}
_TOKENIZER_CORPUS_SCENES = 2000


def make_tokenizer(config, workdir: str) -> tokenizer_lib.Tokenizer:
  """Trains (first use) or loads `workdir/tokenizer.model`; checks it fits the model vocab.

  The corpus does not depend on config.seed: one tokenizer per vocab size, whatever the run.
  """
  tok = tokenizer_lib.train_or_load(workdir, config.data.vocab_size,
                                    world.world_text_corpus(_TOKENIZER_CORPUS_SCENES))
  if "model" in config and "vocab_size" in config.model:
    tokenizer_lib.check_vocab(tok, config.model.vocab_size)
  return tok


def _check(config, process_index: int, process_count: int) -> int:
  d = config.data
  if d.source != "world":
    raise ValueError(f"config.data.source={d.source!r} is not supported yet; use 'world'")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index={process_index} for process_count={process_count}")
  if d.batch_size % process_count:
    raise ValueError(f"config.data.batch_size={d.batch_size} is not divisible by the "
                     f"process count {process_count}")
  if d.image_size % d.patch_size:
    raise ValueError(f"config.data.image_size={d.image_size} is not divisible by "
                     f"config.data.patch_size={d.patch_size}")
  world.check_doc_weights(d.doc_weights)
  if "t2i_weights" in d:
    world.check_weights(d.t2i_weights, world.T2I_CATEGORIES, "config.data.t2i_weights")
  if "story_steps" in d:
    world.check_story_steps(d.story_steps)
  patch_dim = d.patch_size * d.patch_size * 3  # pixel space: the "latent" is the patch too
  for key in ("patch_dim", "latent_dim"):
    if "model" in config and config.model.get(key, patch_dim) != patch_dim:
      raise ValueError(f"config.model.{key}={config.model[key]} but config.data.patch_size="
                       f"{d.patch_size} gives pixel patches of {patch_dim}")
  return d.batch_size // process_count


def _world_doc(index, *, seed, image_size, doc_weights, **kwargs):
  return world.make_document(seed, int(index), image_size, doc_weights, **kwargs)


def _world_kwargs(d, split: str) -> dict[str, Any]:
  """The optional world keys of config.data (split: every scene of a document lies in it)."""
  kwargs = {"split": split}
  if "t2i_weights" in d:
    kwargs["t2i_weights"] = dict(d.t2i_weights)
  if "story_steps" in d:
    kwargs["story_steps"] = tuple(d.story_steps)
  return kwargs


def _encode(doc, *, tokenizer, patch_size):
  return packing.encode_document(doc, tokenizer, patch_size)


def document_indices(config, *, split: str = "train", process_index: int = 0,
                     process_count: int = 1) -> grain.MapDataset:
  """The world document indices this process reads, in order: its shard, shuffled."""
  if split not in _SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {sorted(_SPLITS)}")
  ds = grain.MapDataset.range(_NUM_INDICES)
  ds = ds[process_index::process_count]
  return ds.shuffle(seed=config.seed + 7919 * _SPLITS[split])


def make_dataset(config, tokenizer, *, split: str = "train", process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """The per-process dataset of packed batches (see module docstring)."""
  local_batch = _check(config, process_index, process_count)
  d = config.data
  patch_dim = d.patch_size * d.patch_size * 3
  ds = document_indices(config, split=split, process_index=process_index,
                        process_count=process_count)
  ds = ds.map(functools.partial(_world_doc, seed=[config.seed, _SPLITS[split]],
                                image_size=d.image_size, doc_weights=dict(d.doc_weights),
                                **_world_kwargs(d, split)))
  ds = ds.repeat()
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=d.get("read_threads", 2),
                                            prefetch_buffer_size=64))
  ds = ds.map(functools.partial(_encode, tokenizer=tokenizer, patch_size=d.patch_size))
  if d.get("num_workers", 0) > 0:
    # Grain's worker processes read absl flags; outside absl.app (tests, notebooks) use defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.num_workers))
  ds = packing.PackIterDataset(ds, l_txt=d.l_txt, l_vis=d.l_vis, patch_dim=patch_dim,
                               latent_dim=patch_dim, open_rows=d.get("pack_open_rows", 4))
  return ds.batch(local_batch, drop_remainder=True)


def make_pipeline(config, tokenizer, *, split: str = "train", process_index: int = 0,
                  process_count: int = 1) -> grain.DatasetIterator:
  """Iterator of per-process numpy batches: dicts per batch.row_spec with a leading
  config.data.batch_size // process_count dimension."""
  return iter(make_dataset(config, tokenizer, split=split, process_index=process_index,
                           process_count=process_count))


def packing_stats(iterator: grain.DatasetIterator) -> dict[str, Any]:
  """The packer's counters (docs packed/dropped, rows) and efficiency per stream."""
  todo = [iterator]
  while todo:
    it = todo.pop()
    if isinstance(it, packing.PackDatasetIterator):
      return {**it.packer.stats, "efficiency": it.packer.efficiency()}
    todo.extend(getattr(it, "_parents", ()))
  raise ValueError("iterator has no PackDatasetIterator in its graph")


def _jsonable(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, bytes):
    return {"__bytes__": x.hex()}
  raise TypeError(f"iterator state holds a {type(x).__name__}, which is not JSON-serialisable")


def state_to_json(state: dict[str, Any]) -> str:
  return json.dumps(state, default=_jsonable, sort_keys=True)


def state_from_json(text: str) -> dict[str, Any]:
  def hook(d):
    return bytes.fromhex(d["__bytes__"]) if set(d) == {"__bytes__"} else d
  return json.loads(text, object_hook=hook)
