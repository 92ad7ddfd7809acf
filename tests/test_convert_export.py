"""Export parity: checkpoint -> mogao_jax.export -> (a) the PyTorch module gives
the JAX model's logits and velocities on packed rows with text, context and generated images;
(b) the hf-qwen2 directory loads in Qwen2ForCausalLM with our text-only logits; and
Qwen2 import -> export -> import is the identity on every tensor."""

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# pylint: disable=g-import-not-at-top,wrong-import-position
from mogao_jax import export as export_lib
from mogao_jax.convert import qwen2, tensors
from mogao_jax.data.batch import Kind
from mogao_jax.convert import torch_export as torch_export_lib
from mogao_jax.model.config import ModelConfig
from mogao_jax.train import checkpoint, optimizer
from tests import convertkit as kit
from tests import rowkit
from tests.configs import tiny_config

RTOL = 1e-4
GRID = 2


def _perturbed_state(c, for_checkpoint=False):
  """A state whose every parameter matters (zero-init heads / AdaLN perturbed), as test_model;
  with the run's optimizer state when it goes through a checkpoint (export restores that)."""
  tx = optimizer.make_optimizer(c)[0] if for_checkpoint else None
  return kit.init_state(c, tx, perturb=True)


def _save(c, state, workdir):
  """Saves `state` sharded over the 8 simulated devices (dim 0 where it divides), so export
  has to restore a sharded checkpoint onto one CPU device."""
  mesh = jax.make_mesh((8,), ("d",))
  spec = lambda x: P("d") if np.ndim(x) and np.shape(x)[0] % 8 == 0 else P()  # noqa: E731
  params = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec(x))), state.params)
  assert any(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(params))
  with checkpoint.Checkpointer(str(workdir), c) as ckpt:
    ckpt.save(1, state.replace(params=params), {}, c)


TORCH_CASES = {  # two configs that between them flip every option the torch module reads
    "tinyvit_untied_scanned": dict(qkv_bias=True, qk_norm=True, tie_embeddings=False,
                                   predict="x1", vis_pos_embed="sincos"),
    "siglip_tied_unscanned": dict(qkv_bias=False, qk_norm=False, tie_embeddings=True,
                                  scan_layers=False, vit="siglip", vit_mlp_dim=24,
                                  vit_pos_grid=3, vit_norm_eps=1e-5, predict="velocity",
                                  vis_pos_embed="none"),
}


@pytest.fixture(scope="module", params=list(TORCH_CASES))
def torch_export(request, tmp_path_factory):
  c = tiny_config()
  c.model.update(TORCH_CASES[request.param])
  via_checkpoint = request.param == "tinyvit_untied_scanned"
  model, state = _perturbed_state(c, for_checkpoint=via_checkpoint)
  out = tmp_path_factory.mktemp("torch")
  if via_checkpoint:  # through a checkpoint and the export entry point
    workdir = tmp_path_factory.mktemp("run")
    _save(c, state, workdir)
    export_lib.export(str(workdir), "torch", str(out))
  else:  # the same writer, without the (slow) orbax round trip
    torch_export_lib.export(state.params, ModelConfig.from_config(c.model), str(out))
  return c, model, state.params, str(out)


def _rows(c, n=2, seed=0):
  rng = np.random.default_rng(seed)
  px = lambda: rng.uniform(-1, 1, (GRID * GRID, c.model.patch_dim)).astype(np.float32)
  tok = lambda k: list(rng.integers(3, c.model.vocab_size, k))
  rows = []
  for _ in range(n):
    doc1 = [("txt", tok(4)), ("img", 1, GRID, "VC", px()), ("txt", tok(3)),
            ("img", 2, GRID, "VCN", px()), ("txt", tok(2)), ("img", 3, GRID, "N", px())]
    doc2 = [("txt", tok(5)), ("img", 4, GRID, "V", px()), ("txt", tok(3))]
    rows.append(rowkit.build_row([doc1, doc2], c.data.l_txt, c.data.l_vis, c.model.patch_dim,
                                 c.model.latent_dim))
  b = rowkit.stack(rows)
  nvae = b["vis_kind"] == Kind.NVAE
  b["vis_latent"] = np.where(nvae[..., None], rng.normal(size=b["vis_latent"].shape),
                             b["vis_latent"]).astype(np.float32)
  # One t per image (the model's contract: model/mogao.py conditioning), 1 on clean slots.
  t_img = rng.uniform(0.05, 0.95, (len(rows), 8))
  vis_t = np.where(nvae, np.take_along_axis(t_img, b["vis_image"], 1), 1.0).astype(np.float32)
  return b, vis_t


def test_torch_module_matches_jax(torch_export):
  c, model, params, out = torch_export
  import importlib.util
  spec = importlib.util.spec_from_file_location("exported_torch_model", f"{out}/torch_model.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)  # the copy next to the weights: self-contained
  tm = mod.Mogao.from_dir(out)
  b, vis_t = _rows(c)
  from mogao_jax.data import batch as batch_lib
  inputs = batch_lib.model_inputs(b)
  logits_j, vel_j = jax.jit(model.apply)({"params": params}, inputs, vis_t)
  logits_t, vel_t = tm({k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()},
                       torch.from_numpy(vis_t))
  real_t, real_v = b["txt_segment"] > 0, b["vis_segment"] > 0
  for name, j, t, real in (("logits", logits_j, logits_t, real_t),
                           ("velocity", vel_j, vel_t, real_v)):
    j, t = np.asarray(j)[real], t.numpy()[real]
    err = kit.rel_err(t, j)
    print(f"torch {name}: max abs {np.max(np.abs(t - j)):.3g}, rel {err:.3g}")
    assert err <= RTOL, name


def test_torch_export_names_every_param(torch_export):
  c, _, params, out = torch_export
  flat = tensors.flatten(params)
  sd = tensors.read_file(f"{out}/model.safetensors")
  expected = tensors.unscan(flat, c.model.depth) if tensors.is_scanned(flat) else flat
  assert sorted(sd) == sorted(k.replace("/", ".") for k in expected)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("qwen_src"))
  return path, kit.save_causal_lm(path, "qwen2", tied=False, seed=3)


def test_hf_export_round_trip(tmp_path, hf_model):
  """Our (perturbed, scanned) model -> hf-qwen2 -> transformers logits == ours."""
  c = kit.config_for(hf_model[0])
  model, state = _perturbed_state(c)
  qwen2.export_text(state.params, ModelConfig.from_config(c.model), str(tmp_path / "hf"))
  loaded = transformers.Qwen2ForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
  ids = [1, 7, 19, 40, 2, 88, 5, 63, 11]
  ours, theirs = kit.our_logits(model, state.params, c, ids), kit.hf_logits(loaded, ids)
  err = kit.rel_err(theirs, ours)
  print(f"hf-qwen2 round trip: max abs {np.max(np.abs(ours - theirs)):.3g}, rel {err:.3g}")
  assert err <= RTOL


@pytest.mark.parametrize("scan", [True, False])
def test_import_export_import_is_identity(tmp_path, hf_model, scan):
  path, _ = hf_model
  c = kit.config_for(path, scan=scan)
  _, fresh = kit.init_params(c)
  once, _ = qwen2.import_text(fresh, path)
  qwen2.export_text(once, ModelConfig.from_config(c.model), str(tmp_path))
  src, back = tensors.read_dir(path), tensors.read_dir(str(tmp_path))
  assert sorted(src) == sorted(back)
  for name in src:
    np.testing.assert_array_equal(back[name], src[name], err_msg=name)
  twice, _ = qwen2.import_text(fresh, str(tmp_path))
  a, b = tensors.flatten(once), tensors.flatten(twice)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
