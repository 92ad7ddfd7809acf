"""Qwen2 import parity: our text-only logits == Qwen2ForCausalLM's on the same ids (float32,
<= 1e-4 relative to the largest logit), with GQA, tied and untied embeddings, with q/k/v bias
(Qwen2) and without (a Llama-style checkpoint), scanned and unscanned layouts."""

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

# pylint: disable=g-import-not-at-top,wrong-import-position
from mogao_jax.convert import init as convert_init
from mogao_jax.convert import qwen2
from tests import convertkit as kit

RTOL = 1e-4
IDS = [1, 5, 17, 3, 90, 42, 8, 8, 61, 2, 33, 71]

CASES = {  # name: (arch, tied, scanned)
    "qwen2_untied_scanned": ("qwen2", False, True),
    "qwen2_tied_unscanned": ("qwen2", True, False),
    "llama_nobias_scanned": ("llama", False, True),
}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  out = {}
  for name, (arch, tied, _) in CASES.items():
    path = str(tmp_path_factory.mktemp(name))
    out[name] = (path, kit.save_causal_lm(path, arch, tied))
  return out


@pytest.mark.parametrize("name", list(CASES))
def test_import_logits_match_transformers(hf_dirs, name):
  path, hf_model = hf_dirs[name]
  c = kit.config_for(path, scan=CASES[name][2])
  c.init.text = path
  model, params = kit.init_params(c)
  params, report = convert_init.apply(c, params)
  ours, theirs = kit.our_logits(model, params, c, IDS), kit.hf_logits(hf_model, IDS)
  err = kit.rel_err(ours, theirs)
  print(f"{name}: max abs {np.max(np.abs(ours - theirs)):.3g}, rel {err:.3g}")
  assert err <= RTOL
  mapped = [r for r in report if "UNUSED" not in r and "copied" not in r]
  n_tensors = len(hf_model.state_dict()) - int(CASES[name][1])  # tied: lm_head is embed
  assert len(mapped) == n_tensors, report


def test_vision_pathway_copied(hf_dirs):
  path, _ = hf_dirs["qwen2_tied_unscanned"]
  c = kit.config_for(path, scan=False)
  c.init.text = path
  params, _ = convert_init.apply(c, kit.init_params(c)[1])
  for i in range(c.model.depth):
    blk = params["stack"][f"layers_{i}"]
    np.testing.assert_array_equal(blk["vis"]["q_proj"]["kernel"], blk["txt"]["q_proj"]["kernel"])


def test_disagreeing_config_names_the_keys(hf_dirs):
  path, _ = hf_dirs["qwen2_untied_scanned"]
  c = kit.config_for(path)
  c.model.update(dict(width=32, qk_norm=True))
  with pytest.raises(ValueError, match=r"model\.width=32.*model\.qk_norm=True"):
    qwen2.check_config(c.model, path)


def test_apply_to_state_places_params_and_writes_report(hf_dirs, tmp_path):
  """What the training loop calls on a fresh run with init.text set."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec
  path, _ = hf_dirs["qwen2_untied_scanned"]
  c = kit.config_for(path)
  c.init.text = path
  _, state = kit.init_state(c)
  mesh = jax.make_mesh((8,), ("d",))
  shardings = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), state.params)
  new = convert_init.apply_to_state(c, state, shardings, str(tmp_path))
  emb = new.params["embed_tokens"]["embedding"]
  assert len(emb.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(emb), kit.hf_tensor(path, "model.embed_tokens.weight"))
  report = (tmp_path / "init_report.txt").read_text().splitlines()
  assert any(r.startswith("[init.text] model.layers.1.mlp.down_proj.weight ") and
             "-> stack/layers_1/txt/mlp/down_proj/kernel " in r for r in report), report
