"""The Grain graph, one for every source: documents -> shard by process -> shuffle -> ECTF ->
pack -> batch. Per source k of the mixture (the spec syntax is in data/sources/specs.py; the
default is the built-in world alone):

  world:  MapDataset.range(N) -> [process_index::process_count] -> shuffle(seed_k)
          -> map(make document i: a pure function of (config.seed, split, i); no files)
  files:  MapDataset.source(records) -> [process_index::process_count] -> shuffle(seed_k)
          -> map(records.to_document: decode, validate, resize to a bucket; issues travel with it)
  -> repeat

then MapDataset.mix(sources, weights) (one source: itself) -> condition dropout ->
to_iter_dataset -> map(tokenise + ECTF, truncating a document longer than a row at a text
boundary) -> PackIterDataset -> batch -> state guard.
Every source is sharded BEFORE its shuffle, so each process reads a disjoint, fixed part of it
(union = the source) and an epoch of a process is a permutation of its shard (reshuffled each
epoch). Mixing is Grain's deterministic proportional interleave, so the whole per-process
stream is a pure function of (config, process_index, process_count) and its state is the
packer's replay window over one index. The guard adds the mixture and the process index/count
to the state and refuses a state made by another (see `_StateGuard`).

The iterator state is plain JSON (`state_to_json` / `state_from_json`), for the checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

from absl import flags
import grain
import numpy as np

from mogao_jax.data import batch as batch_lib
from mogao_jax.data import latents
from mogao_jax.data import encoding
from mogao_jax.data import images
from mogao_jax.data import packing
from mogao_jax.data import records
from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.data import transforms
from mogao_jax.data.sources import jsonl
from mogao_jax.data.sources import specs as specs_lib
from mogao_jax.data.sources import world

_NUM_INDICES = 2**31 - 1  # "infinite": documents are procedural, indices never repeat in practice
_SPLITS = {"train": 0, "eval": 1}
_TOKENIZER_CORPUS_SCENES = 2000


def make_tokenizer(config, workdir: str) -> tokenizer_lib.Tokenizer:
  """`config.data.tokenizer` (a file from `python -m mogao_jax.data.train_tokenizer`, copied to
  `workdir/tokenizer.model`) or, when "", trains (first use) or loads `workdir/tokenizer.model`
  from the world's text; checks it fits the model vocab.

  The corpus does not depend on config.seed: one tokenizer per vocab size, whatever the run.
  """
  path = config.data.get("tokenizer", "")
  if path:
    tok = tokenizer_lib.use_file(path, workdir)
  else:
    tok = tokenizer_lib.train_or_load(workdir, config.data.vocab_size,
                                      world.world_text_corpus(_TOKENIZER_CORPUS_SCENES))
  if "model" in config and "vocab_size" in config.model:
    tokenizer_lib.check_vocab(tok, config.model.vocab_size,
                              f"config.data.tokenizer={path!r}" if path else "tokenizer")
  return tok


def _check(config, mix, process_index: int, process_count: int) -> int:
  d = config.data
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index={process_index} for process_count={process_count}")
  if d.batch_size % process_count:
    raise ValueError(f"config.data.batch_size={d.batch_size} is not divisible by the "
                     f"process count {process_count}")
  if d.image_size % d.patch_size:
    raise ValueError(f"config.data.image_size={d.image_size} is not divisible by "
                     f"config.data.patch_size={d.patch_size}")
  if any(s.kind == "world" for s in mix):
    world.check_doc_weights(d.doc_weights)
    if "t2i_weights" in d:
      world.check_weights(d.t2i_weights, world.T2I_CATEGORIES, "config.data.t2i_weights")
    if "story_steps" in d:
      world.check_story_steps(d.story_steps)
  if any(s.kind != "world" for s in mix):
    vit_grid = config.model.get("vit_grid") if "model" in config else None
    records.check_resolution_fits(records.Resolution.from_config(d), d.patch_size, vit_grid)
  latents.check_config(config)
  if d.get("latents", "pixels") == "precomputed" and any(s.kind == "world" for s in mix):
    raise ValueError("config.data.latents='precomputed' needs sources whose images carry "
                     "latents (python -m mogao_jax.encode_latents); the world has none")
  if d.get("latents", "pixels") == "precomputed":
    for s in mix:
      if s.kind == "arrayrecord":
        latents.check_shards(config, jsonl.expand(s.target), images.buckets_from_config(d))
  patch_dim = d.patch_size * d.patch_size * 3  # pixel space: the "latent" is the patch too
  for key in ("patch_dim",) if latents.vision_slots(d)[0] else ("patch_dim", "latent_dim"):
    if "model" in config and config.model.get(key, patch_dim) != patch_dim:
      raise ValueError(f"config.model.{key}={config.model[key]} but config.data.patch_size="
                       f"{d.patch_size} gives pixel patches of {patch_dim}")
  return d.batch_size // process_count


def _world_doc(index, *, seed, image_size, doc_weights, source, **kwargs):
  """World document ``index``; its meta names the source (the per-source counters) and the
  index (which document of the world it is)."""
  doc = world.make_document(seed, int(index), image_size, doc_weights, **kwargs)
  return dataclasses.replace(doc, meta={**doc.meta, records.SOURCE: source,
                                        "world_index": int(index)})


def _world_kwargs(d, split: str) -> dict[str, Any]:
  """The optional world keys of config.data (split: every scene of a document lies in it)."""
  kwargs = {"split": split}
  if "t2i_weights" in d:
    kwargs["t2i_weights"] = dict(d.t2i_weights)
  if "story_steps" in d:
    kwargs["story_steps"] = tuple(d.story_steps)
  return kwargs


class _Reads:
  """A raw-record source as a Grain data source of (raw record, origin) pairs."""

  def __init__(self, src):
    self.src = src

  def __len__(self) -> int:
    return len(self.src)

  def __getitem__(self, index):
    return self.src.read(int(index))


def _to_document(read, *, image_root, resolution, source):
  raw, where = read
  return records.to_document(raw, image_root=image_root, resolution=resolution, source=source,
                             origin=where)


def _shuffle_seed(config, split: str, k: int) -> int:
  """Source k's shuffle seed (k = 0 gets the world graph's seed)."""
  return (config.seed + 7919 * _SPLITS[split] + 1_000_003 * k) % 2**32


def source_documents(config, spec: specs_lib.Spec, k: int, *, split: str = "train",
                     process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """Source k of the mixture as this process's infinite MapDataset of Documents: its shard
  (records process_index::process_count), shuffled, reshuffled every epoch."""
  if split not in _SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {sorted(_SPLITS)}")
  d = config.data
  seed = _shuffle_seed(config, split, k)
  if spec.kind == "world":
    ds = grain.MapDataset.range(_NUM_INDICES)[process_index::process_count].shuffle(seed=seed)
    return ds.map(functools.partial(
        _world_doc, seed=[config.seed, _SPLITS[split]], image_size=d.image_size,
        doc_weights=dict(d.doc_weights), source=spec.name, **_world_kwargs(d, split))).repeat()
  src = specs_lib.open_source(spec)
  ds = grain.MapDataset.source(_Reads(src))[process_index::process_count]
  if len(ds) == 0:
    raise ValueError(f"source {spec.describe()}: {len(src)} records, so process "
                     f"{process_index} of {process_count} gets none; every process needs at "
                     "least one record of every source")
  ds = ds.shuffle(seed=seed).repeat()
  return ds.map(functools.partial(_to_document, image_root=src.image_root, source=spec.name,
                                  resolution=records.Resolution.from_config(d)))


def mixed_documents(config, mix=None, *, split: str = "train", process_index: int = 0,
                    process_count: int = 1) -> grain.MapDataset:
  """This process's Documents of the whole mixture (``mix``: specs_lib.mixture(config.data),
  parsed by the caller)."""
  mix = specs_lib.mixture(config.data) if mix is None else mix
  parts = [source_documents(config, s, k, split=split, process_index=process_index,
                            process_count=process_count) for k, s in enumerate(mix)]
  if len(parts) == 1:
    return parts[0]
  return grain.MapDataset.mix(parts, weights=[s.weight for s in mix])


def _encode_cut(doc, *, tokenizer, patch_size, max_len, latent_patch=0, latent_dim=0,
                encode_grid=None):
  return encoding.encode_document(doc, tokenizer, patch_size, max_len=max_len,
                                 latent_patch=latent_patch, latent_dim=latent_dim,
                                 encode_grid=encode_grid)


def make_dataset(config, tokenizer, *, split: str = "train", process_index: int = 0,
                 process_count: int = 1, limit_docs: int | None = None) -> grain.IterDataset:
  """The per-process dataset of packed batches (see module docstring).

  `limit_docs` (the dataset doctor's): only the first N documents of the stream, the last
  batch possibly short."""
  d = config.data
  mix = specs_lib.mixture(d)  # the one parse of the spec; everything below takes `mix`
  local_batch = _check(config, mix, process_index, process_count)
  ds = mixed_documents(config, mix, split=split, process_index=process_index,
                       process_count=process_count)
  ds = transforms.apply_cond_dropout(ds, config, split)
  if limit_docs is not None:
    ds = ds[:limit_docs]
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=d.get("read_threads", 2),
                                            prefetch_buffer_size=64))
  latent_patch, latent_dim = latents.vision_slots(d)
  vit_cap = batch_lib.config_vit_capacity(config)
  vis_cap = batch_lib.config_vis_capacity(config)
  grid = latents.encode_grid(d) if d.get("latents", "pixels") == "encode" else None
  ds = ds.map(functools.partial(_encode_cut, tokenizer=tokenizer, patch_size=d.patch_size,
                                max_len=(d.l_txt, d.l_vis, vit_cap, vis_cap), latent_patch=latent_patch,
                                latent_dim=latent_dim, encode_grid=grid))
  ds = _maybe_workers(ds, d)
  ds = packing.PackIterDataset(ds, l_txt=d.l_txt, l_vis=d.l_vis,
                               patch_dim=d.patch_size * d.patch_size * 3,
                               latent_dim=latent_dim, open_rows=d.get("pack_open_rows", 4),
                               vit_images=vit_cap, vis_images=vis_cap,
                               vis_pixels=grid and (latents.vision_images(d.l_vis, grid),
                                                    d.image_size, d.image_size))
  ds = ds.batch(local_batch, drop_remainder=limit_docs is None)
  return _StateGuard(ds, _state_header(mix, split, process_index, process_count))


def _maybe_workers(ds: grain.IterDataset, d) -> grain.IterDataset:
  if d.get("num_workers", 0) > 0:
    # Grain's worker processes read absl flags; outside absl.app (tests, notebooks) use defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.num_workers))
  return ds


def _state_header(mix, split, process_index, process_count) -> dict[str, Any]:
  return {"split": split, "process_index": process_index, "process_count": process_count,
          "sources": [[s.name, s.text, s.weight] for s in mix]}


class _StateGuard(grain.IterDataset):
  """Adds what the state is only valid for (the mixture, the split, this process's index of
  the process count) to the iterator state, and refuses a state made for something else with
  an error naming both: a mixture's per-process position (and the packer's replay window)
  means nothing for another shard, and replaying other documents into the saved open rows
  would overflow them."""

  def __init__(self, parent: grain.IterDataset, header: dict[str, Any]):
    super().__init__(parent)
    self._header = header

  def __iter__(self):
    return _StateGuardIterator(self._parent.__iter__(), self._header)

  def __str__(self) -> str:
    return f"_StateGuard({self._header})"


class _StateGuardIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, header: dict[str, Any]):
    super().__init__(parent)
    self._header = header

  def __next__(self):
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    return {"pipeline": self._header, "iterator": self._parent.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    saved = state.get("pipeline") if isinstance(state, dict) else None
    if saved is None and [s[0] for s in self._header["sources"]] == ["world"]:
      # A world-only run saved before the world joined the mixture graph: its iterator state
      # is this graph's inner state (the same Grain nodes), so it resumes as it was.
      self._parent.set_state(state)
      return
    if saved is None:
      raise ValueError("data iterator state was saved by an older pipeline (before the world"
                       " became a source of the mixture graph), but this run reads "
                       f"{self._header['sources']}; the data position cannot be carried over"
                       " (use a fresh workdir or init.params_from)")
    ours = self._header
    if (saved["process_index"], saved["process_count"]) != (ours["process_index"],
                                                            ours["process_count"]):
      raise ValueError(
          f"data iterator state was saved by process {saved['process_index']} of "
          f"{saved['process_count']} processes, but this is process {ours['process_index']} of "
          f"{ours['process_count']}: each process reads its own shard of every source, so a "
          "position cannot move to another process count; resume with "
          f"{saved['process_count']} processes (or start the data afresh in a new workdir with "
          "init.params_from)")
    for key in ("sources", "split"):
      a, b = _norm(saved[key]), _norm(ours[key])
      if a != b:
        raise ValueError(f"data iterator state was saved for {key} {a}, but this run has {b}; "
                         "a mixture's position is only valid for the same sources and weights "
                         "(use a fresh workdir, or init.params_from to keep the weights)")
    self._parent.set_state(state["iterator"])


def _norm(x):
  return json.loads(json.dumps(x))


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


def data_metrics(iterator: grain.DatasetIterator) -> dict[str, float]:
  """The packer's counters as flat metrics (cumulative over the run, restored with the data
  state): data/docs_read, docs_packed, dropped_oversize, dropped_empty, rows, eff_txt,
  eff_vis, data/source_docs/<name>, data/source_packed/<name> (the plain world is "world"),
  data/issues/<reason>. This process's shard only (process 0's is what gets logged)."""
  st = packing_stats(iterator)
  out = {f"data/{k}": float(st[k]) for k in ("docs_packed", "dropped_oversize", "dropped_empty",
                                              "rows")}
  read = st.get("source_docs") or {}
  out["data/docs_read"] = float(sum(read.values()) if read else
                                st["docs_packed"] + st["dropped_oversize"] + st["dropped_empty"])
  out["data/eff_txt"] = float(st["efficiency"]["txt"])
  out["data/eff_vis"] = float(st["efficiency"]["vis"])
  for key in ("source_docs", "source_packed"):
    for name, n in (st.get(key) or {}).items():
      out[f"data/{key}/{name or 'world'}"] = float(n)
  for reason, n in (st.get("issues") or {}).items():
    out[f"data/issues/{reason}"] = float(n)
  return out


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
