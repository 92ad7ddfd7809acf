"""Dry run: compile for a mesh without training; memory and sharding read from XLA's compiled
analysis. On 8 simulated CPU devices."""

import math

import ml_collections
import pytest

from mogao_jax.data import batch as batch_lib

from mogao_jax.parallel import report
from mogao_jax.train import dry_run, gpu_targets
from tests.configs import tiny_config


def _summary(shape):
  c = tiny_config()
  c.model.num_kv_heads = 2
  c.mesh.shape = ml_collections.ConfigDict(shape)
  compiled, rows, mesh = dry_run.compile_step(c)
  return dry_run.summarize(compiled, rows, mesh), rows


@pytest.fixture(scope="module")
def replicated():
  return _summary({"data": 8, "fsdp": 1, "tensor": 1})


@pytest.fixture(scope="module")
def fsdp():
  return _summary({"data": 1, "fsdp": 8, "tensor": 1})


def test_full_fsdp_stores_an_eighth(replicated, fsdp):
  (rep, _), (sh, _) = replicated, fsdp
  assert rep["params_per_device"] == rep["params_total"]
  # Norm scales and biases of non-"embed" dims stay replicated: a few % of a tiny model.
  slack = 0.03
  assert sh["params_per_device"] <= rep["params_total"] * (1 / 8 + slack)
  # The compiled step's arguments are params + optimizer state + the batch; the batch is split
  # 8 ways in both meshes, and the rest must shrink like the parameters.
  c = tiny_config()
  spec = batch_lib.row_spec(c.data.l_txt, c.data.l_vis, c.model.patch_dim, c.model.latent_dim)
  batch_gib = sum(math.prod(shp) * dt.itemsize for shp, dt in spec.values()) * (
      c.data.batch_size / 8) / 2**30
  assert sh["argument_gib"] - batch_gib <= (rep["argument_gib"] - batch_gib) * (1 / 8 + slack)
  assert sh["flops_per_step_per_device"] > 0


def test_replication_tolerance_names_the_key(replicated, fsdp):
  _, rows = replicated
  with pytest.raises(ValueError, match="mesh.max_replicated_fraction") as e:
    report.check_replication(rows, 8, 0.5)
  assert "embed_tokens/embedding" in str(e.value) or "stack/layers" in str(e.value)
  _, rows = fsdp
  assert report.check_replication(rows, 8, 0.05) < 0.05
  assert report.replicated_fraction(rows, 1) == 0.0


def test_report_lists_every_parameter(fsdp):
  _, rows = fsdp
  table = report.format_table(rows)
  assert "embed_tokens/embedding" in table and "('vocab', 'embed')" in table
  assert table.count("\n") == len(rows) + 2


_NO_LIBTPU = "libtpu not installed: pip install -c constraints.txt -e '.[test,tpu]' (.ci/run)"


@pytest.mark.parametrize("name, grid", [
    ("v5p-8", "v5p:2x2x1"), ("v5p-16", "v5p:2x2x2"), ("v5p-32", "v5p:2x2x4"),
    ("v5p-64", "v5p:2x4x4"), ("v5p-256", "v5p:4x4x8"), ("v5p-1024", "v5p:8x8x8"),
    ("v4-32", "v4:2x2x4"), ("v5e-8", "v5e:2x4"), ("v5litepod-16", "v5e:4x4"),
    ("v6e-256", "v6e:16x16"), ("v5p:4x4x8", "v5p:4x4x8")])
def test_slice_names_map_to_chip_grids(name, grid):
  # Cloud TPU slice names count TensorCores on v4 / v5p (two per chip), chips on v5e / v6e;
  # libtpu takes only the grid form.
  assert dry_run.topology_name(name) == grid


@pytest.mark.parametrize("name", ["v5p-12", "v5p-2", "tpu-big", "v5p-"])
def test_bad_topology_names_say_what_is_expected(name):
  with pytest.raises(ValueError, match=f"dry_run_topology = '{name}': expected a slice name"):
    dry_run.topology_name(name)


@pytest.mark.skipif(dry_run.has_libtpu(), reason="libtpu is installed here")
def test_topology_without_libtpu_says_how_to_install_it():
  c = tiny_config()
  c.dry_run_topology = "v5p-8"
  with pytest.raises(RuntimeError, match=r"dry_run_topology='v5p-8': JAX's TPU support"
                     r" \(libtpu\) is not installed.*\.\[tpu\]"):
    dry_run.run(c)


@pytest.mark.skipif(not dry_run.has_libtpu(), reason=_NO_LIBTPU)
def test_compiles_the_train_step_for_a_tpu_topology():
  """Ahead of time, on this CPU host: the whole train step for a 4-chip v5p slice."""
  c = tiny_config()
  c.dry_run_topology = "v5p-8"  # 4 chips, one JAX device each
  out = dry_run.run(c)
  assert out["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
  assert 0 < out["peak_gib"] < 1 and out["flops_per_step_per_device"] > 0
  assert out["hbm_gib"] == 95 and out["peak_of_hbm"] == out["peak_gib"] / 95  # v5p's HBM


@pytest.mark.skipif(not dry_run.has_libtpu(), reason=_NO_LIBTPU)
def test_compiles_the_flash_train_step_for_a_tpu_topology():
  """model.attention='flash' for a v5p slice from this CPU host: the compiled step holds the
  Mosaic kernels (forward, dq, dk/dv; attention.flash_dispatch's TPU branch under shard_map),
  not the interpret-mode emulation the CPU would run."""
  c = tiny_config()
  c.model.attention = "flash"
  c.dry_run_topology = "v5p-8"
  compiled, _, _ = dry_run.compile_step(c, dry_run._topology_devices("v5p-8"))
  text = compiled.as_text()
  assert text.count("tpu_custom_call") >= 3, "no Mosaic kernels in the compiled step"
  for name in ("mogao_flash_tpu_fwd", "mogao_flash_tpu_dq", "mogao_flash_tpu_dkv"):
    assert name in text, name


@pytest.mark.slow  # ~11 min on a loaded 2-core host: outside CI's AOT step (no --runslow there);
@pytest.mark.skipif(not dry_run.has_libtpu(), reason=_NO_LIBTPU)  # run by hand: RESULTS 15
def test_from_parts_compiles_for_a_tpu_topology(tmp_path):
  """experiments/mogao_from_parts.py on config-only parts of real sizes (Qwen2.5-7B,
  SigLIP-so400m, a 16-channel VAE) for a v5p-256 slice, ahead of time: every width real, 2
  layers of each tower (the full depth's numbers: benchmarks/RESULTS.md)."""
  from tests import partskit  # pylint: disable=g-import-not-at-top
  parts = partskit.config_only_parts(tmp_path / "parts", configs=partskit.REAL_CONFIGS)
  c = partskit.recipe_config(parts, "target=v5p-256")
  c.model.update(dict(depth=2, vit_depth=2))
  c.dry_run_topology = "v5p-256"
  out = dry_run.run(c)
  assert out["mesh"] == {"data": 1, "fsdp": 128, "tensor": 1}
  assert out["hbm_gib"] == 95 and 0 < out["peak_gib"] < 95


@pytest.mark.slow  # the trainer's dry run compile (~30-40 s): keeps the default suite inside its 20 minutes
def test_trainer_dry_run_compiles_without_training(tmp_path):
  from mogao_jax.train import loop  # pylint: disable=g-import-not-at-top
  c = tiny_config()
  c.dry_run = True
  (summary,) = loop.train(c, str(tmp_path / "wd"))
  assert summary["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert summary["params_total"] > 0 and summary["peak_gib"] > 0
  assert not (tmp_path / "wd").exists()  # nothing written, no data read


def test_heads_not_dividing_tensor_axis_names_the_values():
  c = tiny_config()  # 2 query heads, 1 kv head
  c.mesh.shape = ml_collections.ConfigDict({"data": 1, "fsdp": 2, "tensor": 4})
  with pytest.raises(ValueError, match=r"\(logical '(kv_)?heads'\) has size [12], which does"
                                       r" not split over mesh axes \('tensor',\) of size 4"):
    dry_run.compile_step(c)


@pytest.mark.parametrize("name, parsed", [
    ("h100", ("h100", 1)), ("h100:8", ("h100", 8)), ("A100:8", ("a100", 8)), ("v5p-8", None),
    ("v5p:2x2x1", None)])
def test_gpu_target_names(name, parsed):
  assert gpu_targets.parse(name) == parsed


def test_gpu_target_counts_and_names_are_checked():
  with pytest.raises(ValueError, match=r"dry_run_topology = 'h100:16': 1 to 8 GPUs"):
    gpu_targets.parse("h100:16")
  assert 'name: "NVIDIA A100-SXM4-80GB"' in gpu_targets.target_config("a100")
  assert "major: 9 minor: 0" in gpu_targets.target_config("h100")


@pytest.mark.skipif(gpu_targets.has_cuda_plugin(), reason="the CUDA plugin is installed here")
def test_gpu_target_without_plugin_says_how_to_install_it():
  c = tiny_config()
  c.dry_run_topology = "h100:8"
  with pytest.raises(RuntimeError, match=r"dry_run_topology='h100:8': JAX's CUDA plugin is not"
                     r" installed.*\.\[aot\]"):
    dry_run.run(c)
