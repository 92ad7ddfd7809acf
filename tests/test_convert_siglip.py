"""SigLIP import parity: SiglipTower features == SiglipVisionModel's last_hidden_state at the
native resolution and at other resolutions (bicubic position interpolation, as HF's
interpolate_pos_encoding); float32, <= 1e-4 relative."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# pylint: disable=g-import-not-at-top,wrong-import-position
from mogao_jax.convert import siglip as siglip_convert
from mogao_jax.model import siglip
from mogao_jax.model.mogao import Mogao
from tests import convertkit as kit

RTOL = 1e-4


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("siglip"))
  hf_cfg = transformers.SiglipVisionConfig(
      hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
      image_size=16, patch_size=4)
  torch.manual_seed(0)
  hf = transformers.SiglipVisionModel(hf_cfg).eval()
  with torch.no_grad():
    for p in hf.parameters():
      p.add_(0.05 * torch.randn_like(p))
  hf.save_pretrained(path)
  cfg = siglip_convert.load_config(path)
  model = siglip.SiglipTower(cfg)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"])
  params, report = siglip_convert.import_tower(params, path)
  return hf, model, params, report


@pytest.mark.parametrize("size", [(16, 16), (24, 20), (8, 12)])
def test_features_match_transformers(tower, size):
  hf, model, params, _ = tower
  images = np.random.default_rng(0).uniform(-1, 1, (2, *size, 3)).astype(np.float32)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, images))
  with torch.no_grad():
    theirs = hf(torch.from_numpy(images).permute(0, 3, 1, 2),
                interpolate_pos_encoding=True).last_hidden_state.numpy()
  err = kit.rel_err(ours, theirs)
  print(f"siglip {size}: max abs {np.max(np.abs(ours - theirs)):.3g}, rel {err:.3g}")
  assert err <= RTOL


def test_report_lists_every_tensor(tower):
  hf, _, _, report = tower
  mapped = [r for r in report if "UNUSED" not in r]
  unused = [r for r in report if "UNUSED" in r]
  assert len(mapped) + len(unused) == len(hf.state_dict())
  assert all(r.startswith("head.") for r in unused), unused  # the pooling head only


@pytest.mark.slow  # the per-image tower against transformers (~45 s): keeps the default suite inside its 20 minutes
def test_mogao_per_image_tower_matches_transformers(tower, tmp_path_factory):
  """model.vit='siglip' + init.vit: the features at an image's VIT slots (grid 6, table 4:
  interpolated) equal SiglipVisionModel's on that image."""
  from mogao_jax.convert import init as convert_init
  from mogao_jax.data.images import patchify
  from tests import rowkit
  from tests.configs import tiny_config
  hf = tower[0]
  path = str(tmp_path_factory.mktemp("siglip_model"))
  hf.save_pretrained(path)
  c = tiny_config()
  c.model.update(siglip_convert.model_keys(path))
  c.model.vit_grid = 6
  c.data.update(dict(l_txt=48, l_vis=4, batch_size=1))
  c.init.vit = path
  model, params = kit.init_params(c)
  params, _ = convert_init.apply(c, params)
  pixels = np.random.default_rng(1).integers(0, 256, (24, 24, 3)).astype(np.uint8)
  patches = patchify(pixels, 4)
  row = rowkit.stack([rowkit.build_row([[("txt", [5, 6]), ("img", 1, 6, "V", patches)]],
                                       48, 4, c.model.patch_dim, c.model.latent_dim)])
  feats = jax.jit(lambda p, b: model.apply(
      {"params": p}, b, method=Mogao.image_features))(params, row)
  ours = np.asarray(feats)[0][row["txt_kind"][0] == 2]
  image = pixels.astype(np.float32)[None] / 127.5 - 1.0
  with torch.no_grad():
    theirs = hf(torch.from_numpy(image).permute(0, 3, 1, 2),
                interpolate_pos_encoding=True).last_hidden_state[0].numpy()
  err = kit.rel_err(ours, theirs)
  print(f"mogao siglip slots: max abs {np.max(np.abs(ours - theirs)):.3g}, rel {err:.3g}")
  assert err <= RTOL
