"""The mapping transforms invert each other, and WORKSPACE.md shows the code's table."""

import numpy as np
import pytest

from mogao_jax.convert import mapping, tensors
from tests.configs import REPO


@pytest.mark.parametrize("kind, ours_shape", [
    ("copy", (5, 4)), ("vector", (2, 3)), ("linear", (4, 2, 3)), ("linear2", (2, 3, 4)),
    ("conv", (3, 3, 2, 5))])
def test_transforms_round_trip(kind, ours_shape):
  x = np.random.default_rng(0).normal(size=ours_shape).astype(np.float32)
  np.testing.assert_array_equal(mapping.to_ours(mapping.to_theirs(x, kind), kind, ours_shape), x)


def test_safetensors_write_read(tmp_path):
  import ml_dtypes
  data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
          "b": np.ones((4,), ml_dtypes.bfloat16), "c": np.array([1, 2], np.int64)}
  tensors.write_file(str(tmp_path / "x.safetensors"), data, {"format": "pt"})
  back = tensors.read_file(str(tmp_path / "x.safetensors"))
  for k, v in data.items():
    assert back[k].dtype == v.dtype
    np.testing.assert_array_equal(back[k], v)


def test_workspace_lists_the_table():
  text = (REPO / "WORKSPACE.md").read_text()
  table = text.split("<!-- mapping:begin -->\n")[1].split("\n<!-- mapping:end -->")[0]
  assert table.strip() == mapping.markdown().strip(), (
      "WORKSPACE.md's mapping table is stale: paste mogao_jax.convert.mapping.markdown()")


def test_import_names_missing_tensors():
  entries = [("a/kernel", "a.weight", "linear"), ("b/scale", "b.weight", "copy")]
  flat = {"a/kernel": np.zeros((2, 3), np.float32), "b/scale": np.zeros((3,), np.float32)}
  with pytest.raises(ValueError, match="lacks tensors.*b.weight"):
    mapping.import_entries(dict(flat), {"a.weight": np.ones((3, 2), np.float32)}, entries, "x")
  with pytest.raises(ValueError, match="no parameters.*b/scale"):
    mapping.import_entries({"a/kernel": flat["a/kernel"]},
                           {"a.weight": np.ones((3, 2)), "b.weight": np.ones(3)}, entries, "x")
  with pytest.raises(ValueError, match="shape mismatch"):
    mapping.import_entries(dict(flat), {"a.weight": np.ones((4, 2)), "b.weight": np.ones(3)},
                           entries, "x")
  report = mapping.import_entries(
      dict(flat), {"a.weight": np.ones((3, 2)), "b.weight": np.ones(3), "c": np.ones(1)},
      entries, "x")
  assert len(report) == 3 and report[-1].startswith("c [1] -> UNUSED")
