"""AutoencoderKL import parity: our latents (posterior mean) and reconstructions equal
diffusers' encode / decode, for a 4-channel (SD/SDXL-style, quant convs) and a 16-channel
(FLUX-style: no quant convs, shift factor) tiny config; float32, <= 1e-4 relative."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# pylint: disable=g-import-not-at-top,wrong-import-position
from mogao_jax.convert import vae as vae_convert
from mogao_jax.model.vae import FLUX_LIKE, AutoencoderKL
from tests import convertkit as kit

RTOL = 1e-4
TINY = dict(in_channels=3, out_channels=3, block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4,
            sample_size=16)
CASES = {"sdxl_like_4ch": dict(latent_channels=4, scaling_factor=0.13025),
         "flux_like_16ch": FLUX_LIKE}


@pytest.fixture(scope="module", params=list(CASES))
def vaes(request, tmp_path_factory):
  path = str(tmp_path_factory.mktemp(request.param))
  torch.manual_seed(0)
  hf = diffusers.AutoencoderKL(**TINY, **CASES[request.param]).eval()
  with torch.no_grad():
    for p in hf.parameters():
      p.add_(0.05 * torch.randn_like(p))
  hf.save_pretrained(path)
  cfg, params, report = vae_convert.load(path)
  return request.param, hf, AutoencoderKL(cfg), params, report


def test_latents_and_reconstruction_match_diffusers(vaes):
  name, hf, model, params, report = vaes
  assert not [r for r in report if "UNUSED" in r], report
  x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  z = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))(params, x))
  rec = np.asarray(jax.jit(lambda p, z: model.apply({"params": p}, z, method="decode"))(params, z))
  cfg = hf.config
  with torch.no_grad():
    mean = hf.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latent_dist.mean
    z_t = (mean - (cfg.shift_factor or 0.0)) * cfg.scaling_factor
    rec_t = hf.decode(z_t / cfg.scaling_factor + (cfg.shift_factor or 0.0)).sample
  for what, ours, theirs in (("latents", z, z_t), ("reconstruction", rec, rec_t)):
    theirs = theirs.permute(0, 2, 3, 1).numpy()
    err = kit.rel_err(ours, theirs)
    print(f"vae {name} {what}: max abs {np.max(np.abs(ours - theirs)):.3g}, rel {err:.3g}")
    assert err <= RTOL, what


def test_latent_patches_round_trip():
  from mogao_jax.model.vae import patchify_latents, unpatchify_latents
  z = np.random.default_rng(0).normal(size=(2, 4, 6, 16)).astype(np.float32)
  p = patchify_latents(z)
  assert p.shape == (2, 6, 64)
  np.testing.assert_array_equal(unpatchify_latents(p, 2, 3), z)
