"""Checkpoint round trip (state + data iterator state) and the config guard."""

import shutil

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from mogao_jax.parallel import mesh as mesh_lib
from mogao_jax.train import checkpoint as ckpt_lib
from mogao_jax.train import optimizer
from mogao_jax.train.state import TrainState


def _small_state(config, mesh):
  tx, _ = optimizer.make_optimizer(config)
  k1, k2 = jax.random.split(jax.random.key(1))
  params = {"kernel": jax.random.normal(k1, (8, 4)), "bias": jax.random.normal(k2, (4,))}
  state = TrainState(step=jnp.int32(7), params=params, opt_state=tx.init(params),
                     rng=jax.random.key(3))
  rows = NamedSharding(mesh, P("data"))
  rep = NamedSharding(mesh, P())
  shardings = jax.tree.map(lambda x: rows if x.ndim == 2 else rep, state)
  return jax.device_put(state, shardings), shardings


def _assert_equal(a, b):
  a = jax.tree.map(lambda x: jax.random.key_data(x) if jnp.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x, a)
  b = jax.tree.map(lambda x: jax.random.key_data(x) if jnp.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x, b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip(config, tmp_path):
  mesh = mesh_lib.make_mesh(config)
  state, shardings = _small_state(config, mesh)
  data_state = {"epoch": 2, "offsets": [3, 5], "name": "world"}
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    assert ckpt.latest_step() is None
    ckpt.save(7, state, data_state, config)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), config)
  assert ckpt.latest_step() == 7
  abstract = ckpt_lib.abstract_with_shardings(state, shardings)
  got, got_data = ckpt.restore(7, abstract, config)
  ckpt.close()
  _assert_equal(got, state)
  assert got_data == [data_state]  # every process's, in process order
  assert got.params["kernel"].sharding == shardings.params["kernel"]


def test_keep_checkpoints(config, tmp_path):
  config.train.keep_checkpoints = 2
  mesh = mesh_lib.make_mesh(config)
  state, _ = _small_state(config, mesh)
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, state, {}, config)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2, 3]


def test_other_model_config_is_refused(config, tmp_path):
  mesh = mesh_lib.make_mesh(config)
  state, shardings = _small_state(config, mesh)
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    ckpt.save(1, state, {}, config)
  other = config.copy_and_resolve_references()
  other.model.width = 64
  other.train.steps = 99  # not a model key: allowed to differ
  with ckpt_lib.Checkpointer(str(tmp_path), other) as ckpt:
    with pytest.raises(ValueError, match=r"model\.width: 32 -> 64") as e:
      ckpt.restore(1, ckpt_lib.abstract_with_shardings(state, shardings), other)
  assert "train.steps" not in str(e.value)


def test_keep_last_n_plus_every_k(config, tmp_path):
  config.train.keep_checkpoints, config.train.keep_every = 2, 4
  state, _ = _small_state(config, mesh_lib.make_mesh(config))
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    for step in range(1, 10):
      ckpt.save(step, state, {}, config)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [4, 8, 9]


def _two_steps(config, tmp_path):
  state, shardings = _small_state(config, mesh_lib.make_mesh(config))
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    ckpt.save(1, state, {"at": 1}, config, tokenizer_files={"tokenizer.model": b"tok1"})
    ckpt.save(2, state.replace(step=jnp.int32(8)), {"at": 2}, config, tokenizer_files={"tokenizer.model": b"tok2"})
  return ckpt_lib.abstract_with_shardings(state, shardings)


def test_unfinished_save_is_never_picked(config, tmp_path):
  abstract = _two_steps(config, tmp_path)
  root = tmp_path / "checkpoints"
  # What a save killed half-way leaves: orbax's temporary dir, not yet renamed to "2".
  (root / "2").rename(root / "2.orbax-checkpoint-tmp-1234")
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    assert ckpt.all_steps() == [1]
    step, state, data = ckpt.restore_latest(abstract, config)
  assert (step, int(state.step), data) == (1, 7, [{"at": 1}])
  assert not (root / "2.orbax-checkpoint-tmp-1234").exists()  # cleaned up at start


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_damaged_checkpoint_falls_back(config, tmp_path, damage):
  abstract = _two_steps(config, tmp_path)
  root = tmp_path / "checkpoints"
  if damage == "truncated":  # the step dir is listed, but its array data is gone
    for f in (root / "2" / "state").rglob("*"):
      if f.is_file() and f.parent.name == "d":
        f.unlink()
  else:
    shutil.rmtree(root / "2")
  tok = tmp_path / "tokenizer.model"
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    ckpt.sync_tokenizer(str(tmp_path))
    step, state, data = ckpt.restore_latest(abstract, config)
    assert ckpt.all_steps() == [1]
  assert (step, int(state.step), data) == (1, 7, [{"at": 1}])
  if damage == "truncated":
    assert [p.name.startswith("unreadable-2-") for p in root.iterdir()].count(True) == 1
    assert tok.read_bytes() in (b"tok1", b"tok2")  # step 2's tokenizer item is intact
  else:
    assert tok.read_bytes() == b"tok1"


def test_no_readable_checkpoint_is_a_clear_error(config, tmp_path):
  abstract = _two_steps(config, tmp_path)
  for d in (tmp_path / "checkpoints").iterdir():
    shutil.rmtree(d / "config")
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    with pytest.raises(RuntimeError, match="no intact checkpoint in .*checkpoints.*step 2"):
      ckpt.restore_latest(abstract, config)


def test_tokenizer_mismatch_is_refused(config, tmp_path):
  _two_steps(config, tmp_path)
  (tmp_path / "tokenizer.model").write_bytes(b"other")
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    with pytest.raises(ValueError, match="differs from the tokenizer saved in checkpoint step 2"):
      ckpt.sync_tokenizer(str(tmp_path))


def test_other_state_structure_is_refused(config, tmp_path):
  abstract = _two_steps(config, tmp_path)
  other = config.copy_and_resolve_references()
  other.train.ema_decay = 0.99
  with_ema = abstract.replace(ema=abstract.params)
  with ckpt_lib.Checkpointer(str(tmp_path), other) as ckpt:
    with pytest.raises(ValueError, match=r"ema\.kernel: not in the checkpoint.*"
                                         r"train\.ema_decay: '<absent>' -> 0\.99|"
                                         r"ema\.kernel: not in the checkpoint.*ema_decay"):
      ckpt.restore_latest(with_ema, other)
