"""experiments/mogao_from_parts.py on config-only parts of REAL sizes (tests/partskit.py
REAL_CONFIGS: Qwen2.5-7B, SigLIP-so400m-patch14-384, a 16-channel FLUX-style VAE; config.json
files alone): the recipe's keys, the memory estimate under the target's memory, the start-up
error naming the keys to change, the valid image sizes, and a depth-reduced dry run compiled
for 8 simulated CPU devices (the full depth: benchmarks/RESULTS.md). The TPU dry run is
tests/test_dry_run.py::test_from_parts_compiles_for_a_tpu_topology (libtpu venv)."""

import pytest

from mogao_jax import config_args
from mogao_jax import config_schema
from mogao_jax.data import batch as batch_lib
from mogao_jax.parallel import estimate
from tests import partskit
from tests.configs import REPO

recipe_config = partskit.recipe_config


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
  return partskit.config_only_parts(tmp_path_factory.mktemp("real") / "parts",
                                    configs=partskit.REAL_CONFIGS)


def test_recipe_keys(parts):
  c = recipe_config(parts)
  config_schema.validate(c)
  m = c.model
  assert (m.width, m.depth, m.vocab_size, m.vit_width, m.vit_depth) == (3584, 28, 152064, 1152, 27)
  assert (m.dtype, m.remat, m.attention) == ("bfloat16", "full", "blockwise")
  # 336 px: the multiple of lcm(14, 8 x 2) = 112 nearest SigLIP's own 384.
  assert (c.data.image_size, m.vit_grid, m.vis_grid, m.latent_dim) == (336, 24, 21, 64)
  assert batch_lib.config_vis_capacity(c) == 3 and c.data.l_vis == 3 * 21 * 21
  assert c.data.batch_size == 8 and c.mesh.device_memory_gib == 80
  assert c.optim.lr == 2e-5 and c.optim.warmup_steps > 0
  assert dict(c.optim.lr_scale) == {"text": 1.0, "vision": 5.0, "connector": 10.0, "vit": 0.0}
  tpu = recipe_config(parts, "target=v5p-256,vit_lr=0.1")
  assert (tpu.data.batch_size, tpu.mesh.device_memory_gib, tpu.optim.lr_scale.vit) == \
      (128, 95, 0.1)


def test_estimate_fits_the_target(parts):
  for arg, devices, gib in (("target=h100:8", 8, 80), ("target=v5p-256", 128, 95)):
    est = estimate.check_fits(recipe_config(parts, arg), devices, gib)
    assert est["params"] > 14e9 and est["gib"]["total"] < 0.6 * gib, (arg, est["gib"])


def test_start_up_error_names_the_keys_to_change(parts, tmp_path):
  from mogao_jax.train import loop  # pylint: disable=g-import-not-at-top
  c = recipe_config(parts, "target=h100:8,rows=2")
  c.model.update(dict(remat="none", dtype="float32", attention="dense"))
  with pytest.raises(estimate.MemoryFitError) as e:
    loop.train(c, str(tmp_path / "wd"))  # before any data read or compile
  msg = str(e.value)
  assert "but a device has 80.0 GiB (mesh.device_memory_gib" in msg
  for key in ("model.remat='full'", "model.dtype='bfloat16'", "model.attention='blockwise'",
              "data.batch_size", "train.offload_opt_state=True", "optim.lr_scale",
              "mesh.device_memory_gib=-1"):
    assert key in msg, key
  assert not (tmp_path / "wd" / "checkpoints").exists()


def test_image_size_error_suggests_the_valid_sizes(parts):
  with pytest.raises(ValueError, match=r"res=384: must be a multiple of the SigLIP patch 14 .*"
                                       r"of 112; the nearest valid sizes: 224, 336, 448, 560"):
    config_args.load_experiment(REPO / "experiments" / "tiny_latent.py").get_config(
        f"parts={parts},res=384")


def test_bad_target_is_named(parts):
  with pytest.raises(ValueError, match=r"target='tpu:8'.*h100:N"):
    recipe_config(parts, "target=tpu:8")


@pytest.mark.slow
def test_depth_reduced_dry_run_compiles_for_8_devices(parts, tmp_path):
  """All widths real, 2 layers of each tower (the compile of the scanned layer is the same)."""
  from mogao_jax.train import loop  # pylint: disable=g-import-not-at-top
  c = recipe_config(parts)
  c.model.update(dict(depth=2, vit_depth=2))
  c.dry_run = True
  (out,) = loop.train(c, str(tmp_path / "wd"))
  assert out["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert out["hbm_gib"] == 80 and 0 < out["peak_gib"] < 80
  assert 0.5 < out["peak_gib"] / out["estimate_gib"] < 2  # the estimate is within its +-30%ish
