"""`python -m mogao_jax.encode_latents`: a tiny random VAE over a tiny JSONL folder.

The job's latents equal the VAE encoder applied directly to the pixels training decodes
(float32 storage: 1e-5 relative to the largest latent; float16: 1e-3), 2 shards give the
1-shard records, a crashed job resumes without redoing finished shards or parts, and the
packer puts the patchified latents into the vision stream (data.latents="precomputed")."""

import base64
import collections
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from mogao_jax import encode_latents as enc
from mogao_jax.data import latents as latents_lib
from mogao_jax.data import records
from mogao_jax.data.sources import arrayrecord
from mogao_jax.model import vae as vae_lib
from tests.configs import REPO

# diffusers AutoencoderKL config.json keys: 2 blocks (downsampling 2), 4 latent channels.
VAE_CONFIG = dict(_class_name="AutoencoderKL", in_channels=3, out_channels=3,
                  block_out_channels=[8, 16], layers_per_block=1, latent_channels=4,
                  norm_num_groups=4, down_block_types=["DownEncoderBlock2D"] * 2,
                  up_block_types=["UpDecoderBlock2D"] * 2, scaling_factor=0.5, shift_factor=0.1)
BUCKETS = ((16, 16), (16, 24))  # two image shapes: two batches, two compiles
RTOL32, RTOL16 = 1e-5, 1e-3


def _png(rng, h, w):
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """(source spec, vae config path, Encoder, cfg, params): 7 records, 9 decodable images, one
  missing file, one line that is not JSON."""
  d = tmp_path_factory.mktemp("lat")
  (d / "img").mkdir()
  rng = np.random.default_rng(0)
  lines = []
  for i in range(7):
    h, w = (16, 16) if i % 3 else (20, 30)  # 20x30 -> the 16x24 bucket
    (d / "img" / f"{i}.png").write_bytes(_png(rng, h, w))
    parts = [{"type": "text", "text": f"picture {i}"},
             {"type": "image", "path": f"{i}.png", "generate": i % 2 == 0}]
    if i == 2:
      parts.append({"type": "image", "bytes": base64.b64encode(_png(rng, 16, 16)).decode()})
    if i == 4:
      parts.append({"type": "image", "path": "missing.png"})
    lines.append(json.dumps({"id": f"doc{i}", "parts": parts, "meta": {"n": i}}))
  lines.insert(3, "{not json")
  (d / "docs.jsonl").write_text("\n".join(lines) + "\n")
  (d / "vae.json").write_text(json.dumps(VAE_CONFIG))
  cfg, params = enc.load_vae(str(d / "vae.json"), seed=0)
  return f"jsonl:{d / 'docs.jsonl'}?images={d / 'img'}", str(d / "vae.json"), cfg, params


@pytest.fixture(scope="module")
def encoder(world):
  _, _, cfg, params = world
  return enc.Encoder(cfg, params, batch_size=4)


def _job(world, out, **kw):
  return enc.Job(world[0], str(out), BUCKETS, **kw)


def _read(out):
  """{id: record} of every part file under `out`."""
  src = arrayrecord.ArrayRecordSource(f"{out}/*.array_record")
  recs = [src[i] for i in range(len(src))]
  return {r["id"]: r for r in recs}


def _latents(rec):
  return [latents_lib.from_field(p["latent"]) if "latent" in p else None
          for p in rec["parts"] if p["type"] == "image"]


def _run(world, encoder, out, shards=1, **kw):
  job = _job(world, out, **kw)
  vae_id = enc.fingerprint(world[2], world[3])
  return [enc.run_shard(job, encoder, vae_id, s, shards) for s in range(shards)]


@pytest.fixture(scope="module")
def one_shard(world, encoder, tmp_path_factory):
  out = tmp_path_factory.mktemp("one")
  progress = _run(world, encoder, out, dtype="float32", records_per_file=3)
  return out, progress[0], _read(out)


def test_latents_equal_the_encoder_applied_directly(world, one_shard):
  src, _, cfg, params = world
  _, progress, recs = one_shard
  root = src.split("images=")[1]
  model = vae_lib.AutoencoderKL(cfg)
  direct = jax.jit(lambda x: model.apply({"params": params}, x, method="encode"))
  assert sorted(recs) == [f"doc{i}" for i in range(7)]
  n = 0
  for rec in recs.values():
    images = [p for p in rec["parts"] if p["type"] == "image"]
    for part, z in zip(images, _latents(rec)):
      pixels, _ = enc.load_image(part, root, BUCKETS)
      if pixels is None:
        assert z is None and part["path"] == "missing.png"
        continue
      want = np.asarray(direct(pixels[None].astype(np.float32) / 127.5 - 1.0))[0]
      assert z.shape == (pixels.shape[0] // 2, pixels.shape[1] // 2, 4) == want.shape
      err = np.max(np.abs(z - want)) / np.max(np.abs(want))
      assert err <= RTOL32, (rec["id"], err)
      n += 1
    assert rec["meta"]["n"] == int(rec["id"][3:])  # the rest of the record is kept
    assert all("path" in p or "bytes" in p for p in images)  # pixels stay for the ViT
  assert n == 8
  c = progress["counts"]
  assert c["images encoded"] == 8 and c["images without latent"] == 1
  assert c["issue image/missing_file"] == 1 and c["records skipped (not a record)"] == 1
  assert progress["done"] and len(progress["parts"]) == 3  # 8 source records, 3 per file


def test_float16_storage(world, encoder, one_shard, tmp_path):
  _run(world, encoder, tmp_path, dtype="float16")
  for rid, rec in _read(tmp_path).items():
    assert {p["latent"]["dtype"] for p in rec["parts"] if "latent" in p} <= {"float16"}
    for z16, z32 in zip(_latents(rec), _latents(one_shard[2][rid])):
      if z32 is not None:
        assert np.max(np.abs(z16 - z32)) <= RTOL16 * np.max(np.abs(z32))


def _same_records(a, b):
  assert sorted(a) == sorted(b)
  for rid in a:
    x, y = dict(a[rid]), dict(b[rid])
    for za, zb in zip(_latents(x), _latents(y)):
      assert (za is None) == (zb is None)
      if za is not None:
        np.testing.assert_allclose(za, zb, rtol=0, atol=1e-6 * np.max(np.abs(zb)))
    strip = lambda r: [{k: v for k, v in p.items() if k != "latent"} for p in r["parts"]]
    assert strip(x) == strip(y) and x["meta"]["n"] == y["meta"]["n"]


def test_two_shards_union_is_one_shard(world, encoder, one_shard, tmp_path):
  progress = _run(world, encoder, tmp_path, shards=2, dtype="float32", records_per_file=3)
  _same_records(_read(tmp_path), one_shard[2])
  assert sum(p["counts"]["records written"] for p in progress) == 7


def test_crash_and_rerun_skips_finished_work(world, encoder, one_shard, tmp_path, monkeypatch):
  kw = dict(dtype="float32", records_per_file=1)
  _run(world, encoder, tmp_path, shards=2, **kw)  # warm: shard 0 done ...
  for f in tmp_path.glob("latents-00001-of-00002*"):
    f.unlink()  # ... shard 1 from scratch
  real_write, real_json, calls = enc._write_part, enc._write_json, collections.Counter()

  def crash_mid_part(path, recs):
    calls["part"] += 1
    if calls["part"] == 3:  # the third part of shard 1: killed while writing it
      with open(f"{path}.tmp", "wb") as f:
        f.write(b"half a file")
      raise KeyboardInterrupt("killed")
    real_write(path, recs)

  monkeypatch.setattr(enc, "_write_part", crash_mid_part)
  job, vae_id = _job(world, tmp_path, **kw), enc.fingerprint(world[2], world[3])
  with pytest.raises(KeyboardInterrupt):
    enc.run_shard(job, encoder, vae_id, 1, 2)
  marker = json.loads((tmp_path / "latents-00001-of-00002.progress.json").read_text())
  assert len(marker["parts"]) == 2 and not marker["done"]

  def crash_before_marker(path, obj):  # part 3 renamed into place, marker not yet updated
    if len(obj["parts"]) == 3 and not obj["done"]:
      raise KeyboardInterrupt("killed")
    real_json(path, obj)

  monkeypatch.setattr(enc, "_write_part", real_write)
  monkeypatch.setattr(enc, "_write_json", crash_before_marker)
  with pytest.raises(KeyboardInterrupt):
    enc.run_shard(job, encoder, vae_id, 1, 2)
  assert (tmp_path / "latents-00001-of-00002-00002.array_record").exists()
  monkeypatch.setattr(enc, "_write_json", real_json)

  before = encoder.calls
  shard0 = (tmp_path / "latents-00000-of-00002.progress.json").stat().st_mtime_ns
  enc.run_shard(job, encoder, vae_id, 0, 2)  # done: skipped, no VAE call, nothing rewritten
  assert encoder.calls == before
  assert (tmp_path / "latents-00000-of-00002.progress.json").stat().st_mtime_ns == shard0
  p1 = enc.run_shard(job, encoder, vae_id, 1, 2)  # continues at its third record
  assert p1["done"] and p1["records_in"] == 4 and len(p1["parts"]) == 4
  assert encoder.calls - before == 2  # shard 1's records 3 and 4 (one image each), not 1 and 2
  assert not list(tmp_path.glob("*.tmp*"))
  _same_records(_read(tmp_path), one_shard[2])


def test_other_settings_are_refused(world, encoder, one_shard):
  out = one_shard[0]
  with pytest.raises(ValueError, match=r"other settings.*'dtype': \('float32', 'float16'\)"):
    _run(world, encoder, out, dtype="float16", records_per_file=3)
  with pytest.raises(ValueError, match="'vae'"):
    enc.run_shard(_job(world, out, dtype="float32", records_per_file=3), encoder, "other", 0, 1)


def test_documents_carry_the_latents(world, one_shard):
  """records.to_document reads the field into Image.latent."""
  src = world[0]
  rec = one_shard[2]["doc2"]
  doc = records.to_document(rec, image_root=src.split("images=")[1], resolution=BUCKETS)
  assert len(doc.images) == 2 and all(im.latent is not None for im in doc.images)
  for im, z in zip(doc.images, _latents(rec)):
    np.testing.assert_array_equal(im.latent, z)


def test_field_round_trip_and_bad_fields():
  z = np.random.default_rng(0).normal(size=(4, 6, 16)).astype(np.float32)
  for dtype, tol in (("float32", 0), ("float16", 1e-3), ("bfloat16", 1e-2)):
    f = latents_lib.to_field(z, dtype)
    back = latents_lib.from_field(records.loads(records.dumps({"f": f}))["f"])
    assert np.max(np.abs(back - z)) <= tol * np.max(np.abs(z))
  f = latents_lib.to_field(z, "float16")
  np.testing.assert_array_equal(
      latents_lib.from_field({**f, "bytes": base64.b64encode(f["bytes"]).decode()}),
      latents_lib.from_field(f))  # JSON: base64 text
  for bad, match in (({**f, "bytes": f["bytes"][:-2]}, "needs"), ({**f, "shape": [4, 6]}, "shape"),
                     ({**f, "dtype": "int8"}, "dtype"), ([1, 2], "dict")):
    with pytest.raises(ValueError, match=match):
      latents_lib.from_field(bad)
  # the packer's layout is the model's (vae.patchify_latents)
  np.testing.assert_array_equal(latents_lib.patchify(z, 2),
                                np.asarray(vae_lib.patchify_latents(z[None], 2))[0])


def test_command_line(world, tmp_path):
  src, vae_json, _, _ = world
  r = subprocess.run([sys.executable, "-m", "mogao_jax.encode_latents", f"--source={src}",
                      f"--vae={vae_json}", f"--out={tmp_path}", "--image_buckets=16x16,16x24",
                      "--num_shards=2", "--shard_index=1", "--batch_size=2"],
                     cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-3000:]
  assert "config.data.latents='precomputed'" in r.stdout
  assert sorted(_read(tmp_path)) == ["doc1", "doc4", "doc6"]  # lines 1, 3 (not JSON), 5, 7


# --------------------------------------------------------------- data.latents = "precomputed"


def _latent_config(config, out, root):
  c = config
  c.data.source = f"arrayrecord:{out}/*.array_record?images={root}"
  c.data.image_buckets = [list(b) for b in BUCKETS]
  c.data.update(dict(latents="precomputed", latent_patch=2, latent_channels=4))
  c.model.update(dict(latent_dim=16, vit_grid=6))
  return c


def test_packer_puts_the_stored_latents_in_the_vision_stream():
  from mogao_jax.data import documents, encoding, images  # pylint: disable=g-import-not-at-top
  from mogao_jax.data.batch import Kind  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  z = rng.normal(size=(8, 12, 4)).astype(np.float32)  # a 16x24 image through a 2x VAE
  px = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)

  class Tok:
    bos_id, eos_id, img_open_id, img_close_id = 2, 3, 4, 5

    def encode(self, text):
      return [10 + len(w) for w in text.split()]

    def special_literals(self, text):
      return []

  doc = documents.Document((documents.Text("draw this"), documents.Image(px, True, latent=z),
                            documents.Image(px, False), documents.Text("done")),
                           meta={"id": "d"})
  out = encoding.encode_document(doc, Tok(), 4, latent_patch=2, latent_dim=16)
  nvae = out["vis_kind"] == Kind.NVAE
  np.testing.assert_array_equal(out["vis_latent"][nvae], latents_lib.patchify(z, 2))
  assert nvae.sum() == 4 * 6 and out["vis_latent"].shape[1] == 16
  np.testing.assert_array_equal(out["vis_pos"][nvae][:, 1:].max(0), [3, 5])  # latent grid
  np.testing.assert_array_equal(out["txt_patch"][out["txt_kind"] == Kind.VIT],
                                images.patchify(px, 4))  # the ViT keeps pixels
  assert ("image/no_latent", "d") in out["doc"]["issues"]  # the second image: dropped, counted
  assert (out["txt_kind"] == Kind.VIT).sum() == 24  # only the first image remains
  with pytest.raises(ValueError, match="config.model.latent_dim=64"):
    encoding.encode_document(doc, Tok(), 4, latent_patch=2, latent_dim=64)


def test_pipeline_trains_on_precomputed_latents(config, world, one_shard, tmp_path):
  from mogao_jax.data import batch as batch_lib, pipeline  # pylint: disable=g-import-not-at-top
  root = world[0].split("images=")[1]
  c = _latent_config(config, one_shard[0], root)
  c.data.num_shards = 1  # 7 records: too few for the default 8 data shards
  tok = pipeline.make_tokenizer(c, str(tmp_path))
  it = pipeline.make_pipeline(c, tok)
  b = next(it)
  batch_lib.check_batch(b, c.data.l_txt, c.data.l_vis, c.model.patch_dim, 16)
  real = b["vis_kind"] > 0
  assert real.any() and np.abs(b["vis_latent"][real]).max() > 0
  stored = np.concatenate([latents_lib.patchify(z, 2) for r in one_shard[2].values()
                           for z in _latents(r) if z is not None])
  rows = {tuple(np.round(v, 5)) for v in stored}
  assert all(tuple(np.round(v, 5)) in rows for v in b["vis_latent"][real])


def test_latent_config_errors_name_the_keys(config, one_shard):
  from mogao_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  c = _latent_config(config.copy_and_resolve_references(), one_shard[0], "/tmp")
  c.model.latent_dim = 48
  with pytest.raises(ValueError, match=r"config.model.latent_dim=48 .*latent_channels=4 .*"
                                       r"latent_patch=2"):
    pipeline.make_dataset(c, None)
  c = config.copy_and_resolve_references()
  c.data.update(dict(latents="precomputed", latent_patch=2, latent_channels=4))
  c.model.latent_dim = 16
  with pytest.raises(ValueError, match="the world has none"):
    pipeline.make_dataset(c, None)
  c.data.latents = "pixel"
  with pytest.raises(ValueError, match="config.data.latents='pixel'"):
    pipeline.make_dataset(c, None)


def test_shards_of_another_size_or_channel_count_are_refused_at_start_up(config, one_shard):
  """One line naming the progress marker and the key, before any data read or compile."""
  from mogao_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  out, progress, _ = one_shard
  assert progress["latent_channels"] == 4 and progress["settings"]["buckets"] == [[16, 16],
                                                                                  [16, 24]]
  marker = f"{out}/latents-00000-of-00001.progress.json"
  c = _latent_config(config.copy_and_resolve_references(), out, "/tmp")
  c.data.image_buckets = [[16, 16]]  # the run would resize 16x24 images to 16x16
  with pytest.raises(ValueError, match=rf"^{marker}: latents encoded for images of "
                                       r"\[\(16, 16\), \(16, 24\)\] \(settings\.buckets\).*"
                                       r"config\.data\.image_size=.*\[\(16, 16\)\]"):
    pipeline.make_dataset(c, None)
  c = _latent_config(config.copy_and_resolve_references(), out, "/tmp")
  c.data.latent_channels, c.model.latent_dim = 16, 64
  with pytest.raises(ValueError, match=rf"^{marker}: latents of 4 channels \(latent_channels\)"
                                       r" but config\.data\.latent_channels=16"):
    pipeline.make_dataset(c, None)


def test_vae_from_a_diffusers_directory(world, tmp_path):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  cfg_json = {k: v for k, v in VAE_CONFIG.items() if k != "_class_name"}
  torch.manual_seed(0)
  diffusers.AutoencoderKL(**cfg_json).save_pretrained(str(tmp_path))
  cfg, params = enc.load_vae(str(tmp_path))
  assert cfg == world[2]  # the same architecture as the .json's
  assert jax.tree.structure(params) == jax.tree.structure(world[3])
  assert enc.fingerprint(cfg, params) != enc.fingerprint(*world[2:])
  with pytest.raises(FileNotFoundError, match="no .*safetensors"):
    enc.load_vae(str(tmp_path.parent))
