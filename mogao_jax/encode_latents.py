"""Offline VAE latents: encode every image of a source once, so training need not run the VAE.

    python -m mogao_jax.encode_latents --source jsonl:/data/docs.jsonl?images=/data/img \\
        --vae /models/flux-vae --out /data/latents [--image_size 256 | --image_buckets 256x256,..]
        [--shard_index I --num_shards N] [--batch_size 16] [--dtype float16]

`--vae`: a diffusers AutoencoderKL directory (config.json + safetensors, converted by
convert/vae.py), or a diffusers-style config .json: random weights from `--vae_seed` (tests).

Output: `OUT/latents-<i>-of-<n>-<part>.array_record`, the source's records (records.dumps) with a
`"latent"` field (data/latents.py) added to every image part that decodes; the part's path or
bytes stay (the ViT reads pixels). Each image is decoded and resized to its bucket exactly as
training does (records.to_document), encoded (jit, batches of `--batch_size` per image shape,
split over the local devices) and stored channels-last as `--dtype`. Train on it with
`config.data.source = "arrayrecord:OUT/*.array_record?images=<the source's image root>"` and
`config.data.latents = "precomputed"`.

Sharding: shard i of n holds source records i, i + n, ... (default: this JAX process's index
and count), so every shard is written by one process and the shards' union is the source.
Resumable: a shard is written `--records_per_file` source records at a time; each part file is
written under a temporary name and renamed, then the shard's progress marker
`OUT/latents-<i>-of-<n>.progress.json` (settings, parts, records consumed, counts) is replaced
atomically. A rerun skips a shard marked done and continues a partial one after its last
recorded part (a part written but not yet recorded is redone); nothing is lost to a crash.
A marker written with other settings (source, VAE weights, sizes, dtype) is refused.
Records the source cannot parse are skipped and counted; an image that does not decode keeps
its part without a latent (training skips it the same way) and its issues are counted by reason.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import glob
import hashlib
import json
import os
import time
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np

from mogao_jax.data import latents as latents_lib
from mogao_jax.data.sources import specs as specs_lib
from mogao_jax.convert import tensors
from mogao_jax.convert import vae as vae_convert
from mogao_jax.model import vae as vae_lib
from mogao_jax.data import records
from mogao_jax.data.sources import arrayrecord

# ----------------------------------------------------------------------------------- the VAE


def load_vae(spec: str, seed: int = 0):
  """(VAEConfig, params) of a diffusers directory, or of a config .json with random weights."""
  if os.path.isdir(spec):
    if not glob.glob(os.path.join(spec, "*.safetensors")):
      raise FileNotFoundError(f"--vae={spec}: no *.safetensors there (a diffusers "
                              "AutoencoderKL directory, or a config .json for random weights)")
    cfg, params, _ = vae_convert.load(spec)
    return cfg, params
  if not os.path.isfile(spec):
    raise FileNotFoundError(f"--vae={spec}: no such directory or file")
  cfg = vae_lib.VAEConfig.from_hf(tensors.read_json(spec), spec)
  logging.warning("--vae=%s is a config: RANDOM weights (seed %d), for tests only", spec, seed)
  f = cfg.factor
  x = jnp.zeros((1, 2 * f, 2 * f, cfg.in_channels))
  abstract = jax.eval_shape(vae_lib.AutoencoderKL(cfg).init, jax.random.key(0), x)["params"]
  # numpy, not model.init: Flax's initialisers take ~20 s to compile on a CPU for a tiny VAE.
  # Kernels N(0, 1/fan_in), biases N(0, 0.02^2), norm scales 1 + N(0, 0.02^2).
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      return (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
    return ((name.endswith("['scale']")) + 0.02 * rng.standard_normal(s.shape)).astype(np.float32)
  return cfg, jax.tree_util.tree_map_with_path(draw, abstract)


def fingerprint(cfg, params) -> str:
  """sha256 (16 hex) of the VAE config and weights: a resumed shard must use the same VAE."""
  h = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(jax.device_get(params)),
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
  return h.hexdigest()[:16]


class Encoder:
  """uint8 images [N, H, W, 3] -> VAE latents [N, H/f, W/f, C] float32 (vae.encode: the
  normalised posterior mean). One jit per image shape; every call is a full batch (zero-padded:
  the VAE has no cross-image op), split over the local devices."""

  def __init__(self, cfg, params, batch_size: int = 16):
    devices = jax.local_devices()
    self.cfg, self.batch = cfg, -(-max(batch_size, 1) // len(devices)) * len(devices)
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    self._in = NamedSharding(mesh, PartitionSpec("batch"))
    self._params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    model = vae_lib.AutoencoderKL(cfg)
    self._fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))
    self._put = jax.device_put
    self.calls = 0

  def __call__(self, pixels: np.ndarray) -> np.ndarray:
    n, out = len(pixels), []
    for i in range(0, n, self.batch):
      x = np.zeros((self.batch, *pixels.shape[1:]), np.float32)
      chunk = pixels[i:i + self.batch]
      x[:len(chunk)] = chunk.astype(np.float32) / 127.5 - 1.0  # as images.patchify
      out.append(np.asarray(self._fn(self._params, self._put(x, self._in)))[:len(chunk)])
      self.calls += 1
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


# ------------------------------------------------------------------------------------ images


def load_image(part: dict[str, Any], image_root: str,
               buckets) -> tuple[np.ndarray | None, list[str]]:
  """(uint8 pixels in their bucket or None, issue reasons) of one raw image part, decoded and
  resized exactly as training does it (records.to_document)."""
  doc = records.to_document({"id": "", "parts": [{"type": "text", "text": "."}, part]},
                            image_root=image_root, resolution=buckets)
  return (doc.images[0].pixels if doc.images else None), [r for r, _ in records.issues_of(doc)]


# ------------------------------------------------------------------------------------- a job


@dataclasses.dataclass(frozen=True)
class Job:
  source: str
  out: str
  buckets: tuple[tuple[int, int], ...]
  dtype: str = "float16"
  records_per_file: int = 256
  decode_threads: int = 8

  def prefix(self, shard_index: int, num_shards: int) -> str:
    return f"latents-{shard_index:05d}-of-{num_shards:05d}"


def encode_records(records: list, encoder: Callable[[np.ndarray], np.ndarray], image_root: str,
                   buckets, dtype: str, counts: collections.Counter,
                   pool: concurrent.futures.Executor | None = None) -> list[dict[str, Any]]:
  """The records with a "latent" in every image part that decodes (copies; inputs untouched).
  A record the source could not parse (None) is dropped and counted. `pool`: decodes images
  in its threads (Pillow releases the GIL); the result does not depend on it."""
  out, images = [], []
  for rec in records:
    if rec is None:
      counts["records skipped (not a record)"] += 1
      continue
    rec = dict(rec)
    parts = rec.get("parts")
    if isinstance(parts, list):
      rec["parts"] = parts = list(parts)
      images += [(parts, j) for j, p in enumerate(parts)
                 if isinstance(p, dict) and p.get("type") == "image"]
    out.append(rec)
  load = functools.partial(_load_part, image_root=image_root, buckets=buckets)
  loaded = (pool.map if pool is not None else map)(load, [parts[j] for parts, j in images])
  todo = collections.defaultdict(list)
  for (parts, j), (pixels, issues) in zip(images, loaded):
    counts.update(f"issue {r}" for r in issues)
    if pixels is None:
      counts["images without latent"] += 1
    else:
      todo[pixels.shape].append((parts, j, pixels))
  for items in todo.values():
    zs = encoder(np.stack([px for _, _, px in items]))
    for (parts, j, _), z in zip(items, zs):
      parts[j] = {**parts[j], "latent": latents_lib.to_field(z, dtype)}
    counts["images encoded"] += len(items)
  counts["records written"] += len(out)
  return out


def _load_part(part, *, image_root, buckets):
  return load_image(part, image_root, buckets)


def _write_json(path: str, obj) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def _write_part(path: str, records: list[dict[str, Any]]) -> None:
  """One ArrayRecord file, under a temporary name until complete."""
  arrayrecord.write(f"{path}.tmp", records)
  os.replace(f"{path}.tmp", path)


def run_shard(job: Job, encoder, vae_id: str, shard_index: int, num_shards: int) -> dict:
  """Encodes (or finishes) one shard; returns its progress marker."""
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f"bad shard {shard_index} of {num_shards}")
  prefix = job.prefix(shard_index, num_shards)
  marker = os.path.join(job.out, f"{prefix}.progress.json")
  src = specs_lib.open_source(job.source)
  settings = {"source": job.source, "source_records": len(src), "shard_index": shard_index,
              "num_shards": num_shards, "records_per_file": job.records_per_file,
              "buckets": [list(b) for b in job.buckets], "dtype": job.dtype, "vae": vae_id}
  progress = None
  if os.path.exists(marker):
    with open(marker) as f:
      progress = json.load(f)
    diff = {k: (progress["settings"].get(k), v) for k, v in settings.items()
            if progress["settings"].get(k) != v}
    if diff:
      raise ValueError(f"{marker} was written with other settings (recorded -> now: "
                       f"{diff}); use another --out or delete that shard's files")
    if progress["done"]:
      logging.info("shard %d of %d: already done (%s), skipped", shard_index, num_shards, marker)
      return progress
  os.makedirs(job.out, exist_ok=True)
  # latent_channels beside the settings (a marker from before it was recorded still resumes):
  # training checks it, with settings.buckets, at start-up (data/latents.py check_shards).
  progress = progress or {"settings": settings, "parts": [], "records_in": 0, "counts": {},
                          "done": False}
  channels = getattr(getattr(encoder, "cfg", None), "latent_channels", None)
  if channels is not None:
    progress.setdefault("latent_channels", channels)
  strays = glob.glob(os.path.join(job.out, f"{prefix}-*")) + glob.glob(f"{marker}.tmp*")
  for stray in strays:  # a temporary file, or a part not yet recorded (it is redone)
    if os.path.basename(stray) not in progress["parts"]:
      os.remove(stray)
  _write_json(marker, progress)
  counts = collections.Counter(progress["counts"])
  todo = range(shard_index, len(src), num_shards)
  t0, n0 = time.time(), counts["images encoded"]
  threads = job.decode_threads
  pool = concurrent.futures.ThreadPoolExecutor(threads) if threads > 1 else None
  try:
    for start in range(progress["records_in"], len(todo), job.records_per_file):
      _encode_part(job, src, todo[start:start + job.records_per_file], start, encoder, counts,
                   progress, marker, prefix, pool)
      logging.info("shard %d of %d: %d / %d records, %.1f images/s", shard_index, num_shards,
                   progress["records_in"], len(todo),
                   (counts["images encoded"] - n0) / max(time.time() - t0, 1e-9))
  finally:
    if pool is not None:
      pool.shutdown()
  progress["done"] = True
  _write_json(marker, progress)
  logging.info("shard %d of %d done: %s", shard_index, num_shards, dict(counts))
  return progress


def _encode_part(job, src, indices, start, encoder, counts, progress, marker, prefix, pool):
  """Source records `indices` (shard positions from `start`) -> the shard's next part file,
  then the marker."""
  chunk = [src[i] for i in indices]
  recs = encode_records(chunk, encoder, src.image_root, job.buckets, job.dtype, counts, pool)
  name = f"{prefix}-{len(progress['parts']):05d}.array_record"
  _write_part(os.path.join(job.out, name), recs)
  progress.update(parts=progress["parts"] + [name], records_in=start + len(chunk),
                  counts=dict(counts))
  _write_json(marker, progress)


def parse_buckets(text: str, image_size: int) -> tuple[tuple[int, int], ...]:
  if not text:
    return ((image_size, image_size),)
  try:
    pairs = [tuple(int(v) for v in b.lower().split("x")) for b in text.split(",") if b.strip()]
  except ValueError as e:
    raise ValueError(f"--image_buckets={text!r}: want HxW,HxW,...") from e
  if not pairs or any(len(p) != 2 or min(p) <= 0 for p in pairs):
    raise ValueError(f"--image_buckets={text!r}: want HxW,HxW,... of positive sizes")
  return tuple(pairs)


def define_flags() -> None:
  """The command's flags (defined only when run as a command: other data tools share names)."""
  flags.DEFINE_string("source", None, "source spec (data/sources/specs.py): "
                      "jsonl:PATH[?images=DIR] | arrayrecord:PATTERN | tfds:NAME")
  flags.DEFINE_string("vae", None, "diffusers AutoencoderKL dir, or a config .json (random)")
  flags.DEFINE_string("out", None, "output directory")
  flags.DEFINE_integer("image_size", 256, "square bucket side (config.data.image_size)")
  flags.DEFINE_string("image_buckets", "", "HxW,HxW,...: resolution buckets "
                      "(config.data.image_buckets); overrides --image_size")
  flags.DEFINE_integer("batch_size", 16, "images per encoder call (rounded up to a multiple of "
                       "the local device count)")
  flags.DEFINE_enum("dtype", "float16", latents_lib.DTYPES, "stored latent dtype")
  flags.DEFINE_integer("records_per_file", 256, "source records per part file (the resume "
                       "granularity)")
  flags.DEFINE_integer("decode_threads", 8, "threads decoding and resizing images")
  flags.DEFINE_integer("shard_index", -1, "this shard (-1: jax.process_index())")
  flags.DEFINE_integer("num_shards", -1, "shards in all (-1: jax.process_count())")
  flags.DEFINE_integer("vae_seed", 0, "weights seed when --vae is a config .json")
  flags.mark_flags_as_required(["source", "vae", "out"])


def main(argv):
  del argv
  f = flags.FLAGS
  shard = f.shard_index if f.shard_index >= 0 else jax.process_index()
  num = f.num_shards if f.num_shards > 0 else jax.process_count()
  cfg, params = load_vae(f.vae, f.vae_seed)
  job = Job(f.source, f.out, parse_buckets(f.image_buckets, f.image_size), f.dtype,
            f.records_per_file, f.decode_threads)
  down = cfg.factor
  if any(h % down or w % down for h, w in job.buckets):
    raise ValueError(f"buckets {job.buckets}: each side must be a multiple of the VAE's "
                     f"downsampling factor {down}")
  progress = run_shard(job, Encoder(cfg, params, f.batch_size), fingerprint(cfg, params),
                       shard, num)
  root = specs_lib.parse(job.source).image_root
  print(f"shard {shard} of {num}: {progress['counts']}\ntrain on it with config.data.source="
        f"'arrayrecord:{os.path.join(job.out, '*.array_record')}?images={root}' and "
        f"config.data.latents='precomputed' (latent channels {cfg.latent_channels})")


if __name__ == "__main__":
  define_flags()
  app.run(main)
