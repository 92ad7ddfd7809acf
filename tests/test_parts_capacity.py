"""Row capacities at the parts' own sizes (issue 30 item 3): the images with vision copies per
row (batch.vis_capacity) count LATENT grids (model.vis_grid), not the SigLIP grid, so edit
pairs are packed, not dropped as doc/oversize. Config-only parts (no torch): the
"encode" pipeline reads only the VAE's config.json."""

import json
import os

import pytest

from mogao_jax import config_args
from mogao_jax.data import batch as batch_lib
from mogao_jax.data import latents
from mogao_jax.data import pipeline
from tests import partskit
from tests.configs import REPO

EXPERIMENT = REPO / "experiments" / "tiny_latent.py"


@pytest.fixture(scope="module")
def other(tmp_path_factory):
  """'other' shapes: SigLIP 24 px / 6 px patches = a 4 x 4 grid; VAE factor 4 x latent_patch
  2 = a 3 x 3 latent grid."""
  root = tmp_path_factory.mktemp("cap")
  parts = partskit.config_only_parts(root / "parts", configs=partskit.shape_configs("other"))
  c = config_args.load_experiment(EXPERIMENT).get_config(f"parts={parts}")
  c.data.source = partskit.write_world_jsonl(str(root / "data"), 32, c.data.image_size,
                                             weights={"edit": 0.8, "t2i": 0.2})
  c.data.batch_size = 4
  return c, str(root)


def test_capacities_count_latent_grids(other):
  c, _ = other
  assert (c.model.vit_grid, c.model.vis_grid, c.data.l_vis) == (4, 3, 27)
  assert batch_lib.config_vis_capacity(c) == 3  # 27 slots / 9 per image (by the SigLIP grid: 1)
  assert batch_lib.config_vit_capacity(c) == c.data.l_txt // 16


def test_edit_documents_are_packed_whole(other):
  c, root = other
  it = pipeline.make_pipeline(c, pipeline.make_tokenizer(c, os.path.join(root, "wd")))
  pairs = 0
  for _ in range(6):
    b = next(it)
    for seg, img in zip(b["vis_segment"], b["vis_image"]):
      ids = {}
      for s, i in zip(seg, img):
        if s:
          ids.setdefault(int(s), set()).add(int(i))
      pairs += sum(len(v) == 2 for v in ids.values())  # an edit's source (CVAE) + target
  st = pipeline.packing_stats(it)
  assert not st["issues"], json.dumps(st["issue_examples"])  # none dropped, none cut
  assert st["dropped_oversize"] == 0 and st["docs_packed"] > 0
  assert pairs >= 4


def test_a_vision_grid_that_is_not_the_latent_grid_is_named(other):
  c, _ = other
  c = c.copy_and_resolve_references()
  c.model.vis_grid = 0  # = the SigLIP grid 4, the latent grid is 3
  with pytest.raises(ValueError, match=r"config\.model\.vis_grid=0 \(vision grid 4\).*"
                                       r"set config\.model\.vis_grid=3"):
    latents.check_config(c)
