"""The image codec (model/codec.py) with a VAE: latents encoded in the train input step
("encode") equal the ones encode_latents stores offline ("precomputed") for the same images,
and bad parts or a VAE that disagrees with the config are named at start-up."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

# pylint: disable=g-import-not-at-top,wrong-import-position
from mogao_jax import config_args
from mogao_jax.convert import vae as vae_convert
from mogao_jax.data import encoding
from mogao_jax.data import latents as latents_lib
from mogao_jax.data import packing
from mogao_jax.data import pipeline
from mogao_jax.data import records
from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.data.sources import world
from mogao_jax.train import loop
from tests import partskit
from tests.configs import REPO, tiny_config

RTOL32 = 1e-5  # float32 storage, as tests/test_encode_latents.py
N_DOCS = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = tmp_path_factory.mktemp("codec")
  vae = partskit.write_vae(str(d / "vae"))
  source = partskit.write_world_jsonl(str(d / "data"), N_DOCS, 16)
  out = d / "latents"
  r = subprocess.run([sys.executable, "-m", "mogao_jax.encode_latents", "--source", source,
                      "--vae", vae, "--out", str(out), "--image_size", "16", "--dtype",
                      "float32", "--batch_size", "8"], cwd=REPO, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  images = source.split("?images=")[1]  # the stored records keep the image paths
  return vae, source, f"arrayrecord:{out}/*.array_record?images={images}"


def _config(source, vae, latents):
  c = tiny_config()
  c.data.update(dict(source=source, latents=latents, vae=vae, latent_patch=2,
                     latent_channels=4, batch_size=4, shuffle_buffer=1))
  c.model.latent_dim = 16
  return c


def _rows_by_id(config, tok, grid=None):
  """document id -> its packed row alone (one document per row), by the config's codec."""
  d = config.data
  spec = pipeline.specs_lib.mixture(d)[0]
  docs = pipeline.source_documents(config, spec, 0)
  latent_patch, latent_dim = latents_lib.vision_slots(d)
  vis_pixels = grid and (latents_lib.vision_images(d.l_vis, grid), d.image_size, d.image_size)
  out = {}
  for i in range(N_DOCS):  # the source repeats: its first pass
    doc = docs[i]
    enc = encoding.encode_document(doc, tok, d.patch_size, (d.l_txt, d.l_vis), latent_patch,
                                   latent_dim, grid)
    pk = packing.TwoStreamPacker(d.l_txt, d.l_vis, 48, latent_dim, 1, vis_pixels=vis_pixels)
    pk.add(enc)
    row = pk.pop_oldest()
    if row is not None and (row["vis_kind"] > 0).any():
      out[doc.meta[records.ID]] = {k: v[None] for k, v in row.items()}
  return out


def test_input_step_latents_equal_the_offline_ones(corpus):
  """Every document with vision copies: its row's latents made by the input step from its
  image files equal the ones encode_latents stored for it (same slots, same values)."""
  vae, source, stored = corpus
  tok = tokenizer_lib.train(128, world.world_text_corpus(100))
  online_cfg = _config(source, vae, "encode")
  codec = vae_convert.codec_for(online_cfg)
  online = _rows_by_id(online_cfg, tok, codec.grid)
  offline = _rows_by_id(_config(stored, vae, "precomputed"), tok)
  assert len(online) >= 4 and sorted(online) == sorted(offline)
  fill = jax.jit(codec.fill_latents)
  for rid, row in online.items():
    a = {k: np.asarray(v) for k, v in fill(codec.params, row).items()}
    b = offline[rid]
    assert sorted(a) == sorted(b)
    for k in a:
      if k != "vis_latent":
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert np.abs(b["vis_latent"]).max() > 0.01  # latents, not zeros (scaling 0.13)
    np.testing.assert_allclose(a["vis_latent"], b["vis_latent"], rtol=0,
                               atol=RTOL32 * np.abs(b["vis_latent"]).max(), err_msg=rid)


def test_a_vae_with_other_channels_is_named_before_any_compile(corpus, tmp_path):
  vae, source, _ = corpus
  c = _config(source, vae, "encode")
  c.data.latent_channels, c.model.latent_dim = 8, 32
  with pytest.raises(ValueError, match=r"config.data.latent_channels=8 but the VAE of "
                     r"config.data.vae has 4 latent channels \(.*vae/config.json\)"):
    loop.train(c, str(tmp_path / "wd"))
  assert not os.path.exists(tmp_path / "wd" / "checkpoints")


def test_encode_without_a_vae_is_refused(tmp_path):
  c = _config("world", "", "encode")
  with pytest.raises(ValueError, match="config.data.latents='encode' needs config.data.vae"):
    loop.train(c, str(tmp_path / "wd"))


@pytest.mark.parametrize("missing", ["qwen2", "siglip", "vae"])
def test_a_missing_part_is_named(tmp_path, missing):
  parts = tmp_path / "parts"
  partskit.config_only_parts(parts, skip=missing)
  module = config_args.load_experiment(REPO / "experiments" / "tiny_latent.py")
  with pytest.raises(FileNotFoundError, match=f"{parts / missing}: missing part"):
    module.get_config(f"parts={parts}")
  with pytest.raises(ValueError, match="needs its parts directory"):
    module.get_config()
