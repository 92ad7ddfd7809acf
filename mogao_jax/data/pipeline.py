"""The Grain graph, one for every source: documents -> shard -> shuffle -> ECTF -> pack ->
batch. The global batch is config.data.num_shards data shards (data/shards.py: fixed row
blocks, each an independent stream), so the stream does not depend on the process count; a
process builds the shards of its rows. Per data shard s of S and source k of the mixture (the
spec syntax is in data/sources/specs.py; the default is the built-in world alone):

  world:  MapDataset.range(N) -> [s::S] -> shuffle(seed_k)
          -> map(make document i: a pure function of (config.seed, split, i); no files)
  files:  MapDataset.source(records) -> [s::S] -> shuffle(seed_k)
          -> map(records.to_document: decode, validate, resize to a bucket; issues travel with it)
  -> repeat

then MapDataset.mix(sources, weights) (one source: itself) -> condition dropout ->
to_iter_dataset -> map(tokenise + ECTF, truncating a document longer than a row at a text
boundary) -> PackIterDataset -> batch(B / S); the owned shards' batches are concatenated
(shards.ShardZip). Every source is split BEFORE its shuffle, so each shard reads a disjoint,
fixed part of it (union = the source) and an epoch of a shard is a permutation of its part
(reshuffled each epoch). Mixing is Grain's deterministic proportional interleave, so each
shard's stream is a pure function of (config, s, S) and its state is the packer's replay
window over one index. The state is {shard: state} plus the mixture, split and S; a state
made for other sources or another S is refused (shards.ShardZipIterator).

The iterator state is plain JSON (`state_to_json` / `state_from_json`), for the checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable

from absl import flags
import grain
import numpy as np

from mogao_jax.data import batch as batch_lib
from mogao_jax.data import latents
from mogao_jax.data import encoding
from mogao_jax.data import images
from mogao_jax.data import packing
from mogao_jax.data import records
from mogao_jax.data import shards as shards_lib
from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.data import transforms
from mogao_jax.data.sources import jsonl
from mogao_jax.data.sources import specs as specs_lib
from mogao_jax.data.sources import world

_NUM_INDICES = 2**31 - 1  # "infinite": documents are procedural, indices never repeat in practice
_SPLITS = {"train": 0, "eval": 1}
_TOKENIZER_CORPUS_SCENES = 2000


def make_tokenizer(config, workdir: str):
  """`config.data.tokenizer` (a file from `python -m mogao_jax.data.train_tokenizer`, or a
  Hugging Face tokenizer.json or a directory holding one; copied into the workdir) or, when "",
  trains (first use) or loads `workdir/tokenizer.model` from the world's text; checks it fits
  the model's vocabulary (and, with config.init.text, that it is that LM's).

  The corpus does not depend on config.seed: one tokenizer per vocab size, whatever the run.
  """
  d = config.data
  path = d.get("tokenizer", "")
  if path:
    tok = tokenizer_lib.use_file(path, workdir, specials=d.get("tokenizer_specials", ""))
  else:
    tok = tokenizer_lib.train_or_load(workdir, d.vocab_size,
                                      world.world_text_corpus(_TOKENIZER_CORPUS_SCENES))
  if "model" in config and "vocab_size" in config.model:
    init = config.get("init", {})
    tokenizer_lib.check_vocab(
        tok, config.model.vocab_size,
        f"config.data.tokenizer={path!r}" if path else "the world tokenizer",
        data_vocab_size=d.vocab_size if tok.kind == "hf" else 0,
        imported=init.get("text", "") if init else "",
        relearn=bool(d.get("tokenizer_relearn", False)))
  return tok


def check_config(config) -> None:
  """The data keys against each other, the model and the files (every data.source glob
  matches a file); raises ValueError naming the key. Reads no record."""
  mix = specs_lib.mixture(config.data)
  _check(config, mix)
  for s in mix:
    if s.kind in ("jsonl", "arrayrecord"):
      try:
        jsonl.expand(s.target)
      except FileNotFoundError as e:
        key = "sources" if config.data.get("sources") else "source"
        raise ValueError(f"config.data.{key}: source {s.text!r}: {e}") from None


def _check(config, mix) -> None:
  d = config.data
  shards_lib.num_shards(d)
  encoding.role_weights(d)
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
                     shard: int = 0, num_shards: int = 1) -> grain.MapDataset:
  """Source k of the mixture as data shard `shard`'s infinite MapDataset of Documents: its
  records shard::num_shards, shuffled, reshuffled every epoch (repeat=False: one pass)."""
  if split not in _SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {sorted(_SPLITS)}")
  d = config.data
  seed = _shuffle_seed(config, split, k)
  if spec.kind == "world":
    ds = grain.MapDataset.range(_NUM_INDICES)[shard::num_shards].shuffle(seed=seed)
    return ds.map(functools.partial(
        _world_doc, seed=[config.seed, _SPLITS[split]], image_size=d.image_size,
        doc_weights=dict(d.doc_weights), source=spec.name, **_world_kwargs(d, split))).repeat()
  src = specs_lib.open_source(spec)
  ds = grain.MapDataset.source(_Reads(src))[shard::num_shards]
  if len(ds) == 0:
    raise ValueError(f"source {spec.describe()}: {len(src)} records, so data shard {shard} of "
                     f"{num_shards} gets none; every data shard needs at least one record of "
                     "every source (lower config.data.num_shards)")
  ds = ds.shuffle(seed=seed).repeat()
  return ds.map(functools.partial(_to_document, image_root=src.image_root, source=spec.name,
                                  resolution=records.Resolution.from_config(d)))


def mixed_documents(config, mix=None, *, split: str = "train", shard: int = 0,
                    num_shards: int = 1) -> grain.MapDataset:
  """Data shard `shard`'s Documents of the whole mixture (``mix``:
  specs_lib.mixture(config.data), parsed by the caller)."""
  mix = specs_lib.mixture(config.data) if mix is None else mix
  parts = [source_documents(config, s, k, split=split, shard=shard, num_shards=num_shards)
           for k, s in enumerate(mix)]
  if len(parts) == 1:
    return parts[0]
  return grain.MapDataset.mix(parts, weights=[s.weight for s in mix])


def _encode_cut(doc, *, tokenizer, patch_size, max_len, latent_patch=0, latent_dim=0,
                encode_grid=None, text_loss_weights=None):
  return encoding.encode_document(doc, tokenizer, patch_size, max_len=max_len,
                                 latent_patch=latent_patch, latent_dim=latent_dim,
                                 encode_grid=encode_grid, text_loss_weights=text_loss_weights)


def make_dataset(config, tokenizer, *, split: str = "train", process_index: int = 0,
                 process_count: int = 1, shards: list[int] | None = None,
                 limit_docs: int | None = None) -> grain.IterDataset:
  """The per-process dataset of packed batches (see module docstring): the data shards
  `shards` (default: the process_index-th of process_count equal blocks of the global batch),
  each a stream of config.data.batch_size // num_shards rows, concatenated in that order.

  `limit_docs` (the dataset doctor's): one stream (a single shard) of only the first N
  documents, the last batch possibly short."""
  d = config.data
  mix = specs_lib.mixture(d)  # the one parse of the spec; everything below takes `mix`
  _check(config, mix)
  n = 1 if limit_docs is not None else shards_lib.num_shards(d)
  if limit_docs is not None:
    shards = [0]
  elif shards is None:
    shards = shards_lib.process_shards(d, process_index, process_count)
  parts = [_shard_dataset(config, tokenizer, mix, split, s, n, limit_docs, len(shards))
           for s in shards]
  header = {"split": split, "num_shards": n, "sources": [[m.name, m.text, m.weight] for m in mix]}
  return shards_lib.ShardZip(parts, shards, header)


def _shard_dataset(config, tokenizer, mix, split, shard, n, limit_docs, n_local):
  """Data shard `shard` of `n`: documents -> dropout -> encode -> pack -> batches of B / n."""
  d = config.data
  ds = mixed_documents(config, mix, split=split, shard=shard, num_shards=n)
  ds = transforms.apply_cond_dropout(ds, config, split, stream=shard)
  if limit_docs is not None:
    ds = ds[:limit_docs]
  # The shards share the host: data.read_threads and the read-ahead of one stream, split
  # between them (at least one thread and 8 documents each).
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=max(1, d.get("read_threads", 2) // n_local),
      prefetch_buffer_size=max(8, 64 // n_local)))
  latent_patch, latent_dim = latents.vision_slots(d)
  vit_cap = batch_lib.config_vit_capacity(config)
  vis_cap = batch_lib.config_vis_capacity(config)
  grid = latents.encode_grid(d) if d.get("latents", "pixels") == "encode" else None
  ds = ds.map(functools.partial(_encode_cut, tokenizer=tokenizer, patch_size=d.patch_size,
                                max_len=(d.l_txt, d.l_vis, vit_cap, vis_cap), latent_patch=latent_patch,
                                latent_dim=latent_dim, encode_grid=grid,
                                text_loss_weights=encoding.role_weights(d)))
  ds = _maybe_workers(ds, d)
  ds = packing.PackIterDataset(ds, l_txt=d.l_txt, l_vis=d.l_vis,
                               patch_dim=d.patch_size * d.patch_size * 3,
                               latent_dim=latent_dim, open_rows=d.get("pack_open_rows", 4),
                               vit_images=vit_cap, vis_images=vis_cap,
                               vis_pixels=grid and (latents.vision_images(d.l_vis, grid),
                                                    d.image_size, d.image_size))
  return ds.batch(d.batch_size // n, drop_remainder=limit_docs is None)


def _maybe_workers(ds: grain.IterDataset, d) -> grain.IterDataset:
  if d.get("num_workers", 0) > 0:
    # Grain's worker processes read absl flags; outside absl.app (tests, notebooks) use defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.num_workers))
  return ds


def make_pipeline(config, tokenizer, *, split: str = "train", process_index: int = 0,
                  process_count: int = 1, shards: list[int] | None = None
                  ) -> grain.DatasetIterator:
  """Iterator of per-process numpy batches: dicts per batch.row_spec with a leading
  dimension of len(shards) * config.data.batch_size // num_shards rows (shards: as in
  make_dataset; the trainer passes shards_lib.shards_of_rows of its devices' rows)."""
  return iter(make_dataset(config, tokenizer, split=split, process_index=process_index,
                           process_count=process_count, shards=shards))


def packing_stats(iterator: grain.DatasetIterator,
                  gather: Callable[[Any], list[Any]] | None = None) -> dict[str, Any]:
  """The packers' counters (docs packed/dropped, rows; summed over this process's data
  shards, and over every process with `gather`, a JSON all-gather) and efficiency per
  stream."""
  packers = [it.packer for it in shards_lib.find_all(iterator, packing.PackDatasetIterator)]
  if not packers:
    raise ValueError("iterator has no PackDatasetIterator in its graph")
  st = shards_lib.merge_stats([p.stats for p in packers])
  if gather is not None:
    st = shards_lib.merge_stats(gather(st))
  rows = max(st["rows"], 1)
  return {**st, "efficiency": {"txt": st["txt_real"] / (rows * packers[0].l_txt),
                               "vis": st["vis_real"] / (rows * packers[0].l_vis)}}


def data_metrics(iterator: grain.DatasetIterator,
                 gather: Callable[[Any], list[Any]] | None = None,
                 text_loss_weights: dict[str, float] | None = None) -> dict[str, float]:
  """The packers' counters as flat metrics (cumulative over the run, restored with the data
  state): data/docs_read, docs_packed, dropped_oversize, dropped_empty, rows, eff_txt,
  eff_vis, data/source_docs/<name>, data/source_packed/<name> (the plain world is "world"),
  data/issues/<reason>, data/text_tokens/<role> (text loss positions) and
  data/text_share/<role> (the role's share of the text loss weight, with `text_loss_weights`:
  encoding.role_weights; None = all 1). Global with `gather` (every process must call it
  then); else this process's data shards only."""
  st = packing_stats(iterator, gather)
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
  shares = text_shares(st, text_loss_weights)
  for role, n in (st.get("text_tokens") or {}).items():
    out[f"data/text_tokens/{role}"] = float(n)
    out[f"data/text_share/{role}"] = shares[role]
  return out


def text_shares(stats: dict[str, Any], text_loss_weights: dict[str, float] | None = None
                ) -> dict[str, float]:
  """{role: its share of the text loss weight} from the packers' text_tokens counts and
  config.data.text_loss_weights (encoding.role_weights; None = all 1)."""
  weighed = {r: n * (text_loss_weights or {}).get(r, 1.0)
             for r, n in (stats.get("text_tokens") or {}).items()}
  total = sum(weighed.values())
  return {r: w / total if total > 0 else 0.0 for r, w in weighed.items()}


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
