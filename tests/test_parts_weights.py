"""A parts directory whose config.json and safetensors disagree fails when the config is read
(before any compile), naming the config file, the key and the tensor (part_configs.
check_weights reads only the safetensors headers)."""

import json
import os
import shutil

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("diffusers")

# pylint: disable=g-import-not-at-top,wrong-import-position
from mogao_jax import config_args
from mogao_jax import part_configs
from tests import partskit
from tests.configs import REPO


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
  return partskit.write_parts(str(tmp_path_factory.mktemp("w") / "parts"))


def _edit(parts, tmp_path, part, **changes):
  out = str(tmp_path / "parts")
  shutil.copytree(parts, out)
  f = os.path.join(out, part, "config.json")
  cfg = json.load(open(f))
  (cfg.get("vision_config", cfg) if part == "siglip" else cfg).update(changes)
  json.dump(cfg, open(f, "w"))
  return out, f


def test_matching_parts_pass(parts):
  assert part_configs.safetensors_shapes(os.path.join(parts, "qwen2"))[
      "model.embed_tokens.weight"] == (256, 64)
  part_configs.parts_dir(parts)


@pytest.mark.parametrize("part,changes,pattern", [
    ("qwen2", dict(hidden_size=80), r"hidden_size=80 does not match the weights: "
     r"model\.embed_tokens\.weight in .*qwen2/\*\.safetensors has shape \[256, 64\]"),
    ("qwen2", dict(vocab_size=512), r"vocab_size=512 does not match.*embed_tokens"),
    ("qwen2", dict(num_hidden_layers=3), r"num_hidden_layers says 3 .* hold 2"),
    ("siglip", dict(intermediate_size=40), r"intermediate_size=40 does not match.*fc1"),
    ("vae", dict(latent_channels=16), r"latent_channels=16 does not match.*conv_out"),
])
def test_disagreeing_config_names_file_key_and_tensor(parts, tmp_path, part, changes, pattern):
  out, cfg_file = _edit(parts, tmp_path, part, **changes)
  with pytest.raises(ValueError, match=f"^{cfg_file}: {pattern}"):
    part_configs.parts_dir(out)
  with pytest.raises(ValueError, match=pattern):  # the experiment, at config read
    config_args.load_experiment(REPO / "experiments" / "tiny_latent.py").get_config(
        f"parts={out}")
