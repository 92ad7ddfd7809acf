"""Restore never destroys: only a step PROVEN damaged by its manifest is set aside (the audit's
200-byte overwrite falls back to the previous step); a layout or config this run cannot take is
one ResumeError with every step left in place; run-changing config keys need
train.allow_config_change."""

import logging
import os

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from mogao_jax.parallel import mesh as mesh_lib
from mogao_jax.train import checkpoint as ckpt_lib
from mogao_jax.train import integrity
from mogao_jax.train import runcard
from tests.test_checkpoint import _small_state


def _two_steps(config, tmp_path):
  state, shardings = _small_state(config, mesh_lib.make_mesh(config))
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    ckpt.save(1, state, {"at": 1}, config)
    ckpt.save(2, state.replace(step=jnp.int32(8)), {"at": 2}, config)
  return state, shardings


def _dirs(tmp_path):
  return sorted(p.name for p in (tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize("async_save", [True, False])
def test_every_step_has_a_manifest_that_verifies(config, tmp_path, async_save):
  config.train.async_checkpointing = async_save
  _two_steps(config, tmp_path)
  for step in ("1", "2"):
    step_dir = tmp_path / "checkpoints" / step
    assert (step_dir / integrity.MANIFEST).exists()
    assert integrity.check(str(step_dir)) is None
    names = integrity.write(str(step_dir))  # the manifest covers the array data
    assert any(n.startswith("state/") and "/d/" in n for n in names)


def test_overwritten_bytes_fall_back_to_the_previous_step(config, tmp_path, caplog):
  """The audit's case: 200 bytes overwritten mid-file of the largest array data file."""
  state, shardings = _two_steps(config, tmp_path)
  data = [p for p in (tmp_path / "checkpoints" / "2" / "state").glob("ocdbt.process_0/d/*")]
  victim = max(data, key=lambda p: p.stat().st_size)
  raw = bytearray(victim.read_bytes())
  mid = len(raw) // 2 - 100
  raw[mid:mid + 200] = bytes((b + 1) % 256 for b in raw[mid:mid + 200])
  victim.write_bytes(bytes(raw))
  caplog.set_level(logging.WARNING)
  abstract = ckpt_lib.abstract_with_shardings(state, shardings)
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    step, got, data_state = ckpt.restore_latest(abstract, config)
  assert (step, int(got.step), data_state) == (1, 7, [{"at": 1}])  # every process's state
  assert "fails its sha256 check" in caplog.text
  assert "fell back to step 1, the newest step that verifies" in caplog.text
  names = _dirs(tmp_path)
  assert "1" in names and "2" not in names  # step 1 verifies: untouched
  assert [n for n in names if n.startswith("unreadable-2-")]


def test_a_restore_error_of_a_verified_step_moves_nothing(config, tmp_path):
  """A layout this run cannot take (here 8 rows over 3 devices) is one clear error."""
  state, _ = _two_steps(config, tmp_path)
  mesh3 = Mesh(np.array(jax.devices()[:3]), ("x",))
  bad = jax.tree.map(lambda x: NamedSharding(mesh3, P("x") if x.ndim == 2 else P()), state)
  abstract = ckpt_lib.abstract_with_shardings(state, bad)
  before = _dirs(tmp_path)
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    with pytest.raises(ckpt_lib.ResumeError, match=r"step 2 passes its integrity check but this"
                                                   r" run cannot restore it .*Nothing was moved"):
      ckpt.restore_latest(abstract, config)
  assert _dirs(tmp_path) == before == ["1", "2"]


def test_a_step_without_manifest_is_used_unverified_and_never_moved(config, tmp_path, caplog):
  state, shardings = _two_steps(config, tmp_path)
  os.remove(tmp_path / "checkpoints" / "2" / integrity.MANIFEST)  # saved by an older version
  caplog.set_level(logging.WARNING)
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    step, _, _ = ckpt.restore_latest(ckpt_lib.abstract_with_shardings(state, shardings), config)
  assert step == 2 and "using it unverified" in caplog.text
  assert _dirs(tmp_path) == ["1", "2"]


def test_a_changed_run_config_is_refused_unless_allowed(config, tmp_path):
  state, shardings = _two_steps(config, tmp_path)
  abstract = ckpt_lib.abstract_with_shardings(state, shardings)
  other = config.copy_and_resolve_references()
  other.optim.lr = 2 * config.optim.lr
  other.train.steps = 9
  other.data.batch_size = 16
  other.train.log_every = 3  # cadence: free to change
  other.mesh.shape = {"data": 4, "fsdp": 2}  # the restore re-shards: free to change
  with ckpt_lib.Checkpointer(str(tmp_path), other) as ckpt:
    with pytest.raises(ckpt_lib.ResumeError) as e:
      ckpt.restore_latest(abstract, other)
  msg = str(e.value)
  assert f"optim.lr: {config.optim.lr!r} -> {other.optim.lr!r}" in msg
  assert "train.steps: 4 -> 9" in msg and "data.batch_size: 8 -> 16" in msg
  assert "log_every" not in msg and "mesh" not in msg.split("current):")[1].split(".")[0]
  assert "--config.train.allow_config_change=True" in msg
  assert _dirs(tmp_path) == ["1", "2"]

  other.train.allow_config_change = True
  with ckpt_lib.Checkpointer(str(tmp_path), other) as ckpt:
    step, _, _ = ckpt.restore_latest(abstract, other)
    changes = ckpt.config_changes
  assert step == 2 and len(changes) == 3 and "train.steps: 4 -> 9" in changes
  card = runcard.write_run_card(other, str(tmp_path), config_changes=changes)
  assert card["sessions"][-1]["config_changes_allowed"] == changes
