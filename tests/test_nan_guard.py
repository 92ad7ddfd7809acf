"""NaN/Inf guard: poisoned batches skip the update, are logged with provenance, and
train.max_nan_skips consecutive skips stop the run; skipped steps are never saved over the last
good checkpoint, and a run that ends inside a streak of skips fails."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mogao_jax.train import checkpoint as ckpt_lib
from mogao_jax.train import loop
from mogao_jax.train import nan_guard
from mogao_jax.train import step as step_lib
from mogao_jax.train.state import TrainState


def _state(ckpt, step):
  args = ocp.args.Composite(state=ocp.args.StandardRestore())
  return jax.device_get(ckpt.manager.restore(step, args=args)["state"])


def test_poisoned_batches_are_skipped_then_stop(config, tmp_path, caplog):
  # steps / ckpt_every as in test_resume.py: the same compiled step (the hook is host-side).
  config.train.update(dict(steps=8, ckpt_every=2, keep_checkpoints=0, max_nan_skips=2,
                           debug_nan_steps=(3, 4, 5)))
  caplog.set_level(logging.WARNING)
  with pytest.raises(nan_guard.NonFiniteError, match=r"train\.max_nan_skips = 2.*"
                                                     r"rerun resumes from step 2 "):
    loop.train(config, str(tmp_path))
  assert "Batch provenance: data iterator state before it = {" in caplog.text
  assert "non-finite loss or gradient at step 3" in caplog.text

  recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  # Stopped early: the step-4 save point checks step 4 at once (2 in a row).
  assert [r["step"] for r in recs] == [1, 2, 3, 4]
  assert [r["skipped"] for r in recs] == [0, 0, 1, 1]
  assert all(np.isfinite(r["loss"]) for r in recs[:2]) and np.isnan(recs[2]["loss"])

  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    assert ckpt.all_steps() == [2]  # step 4 (inside the streak) and no final save
    good = _state(ckpt, 2)
  assert (int(good["step"]), int(good["nan_run"]), int(good["nan_total"])) == (2, 0, 0)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(good["params"]))


def test_a_run_that_ends_inside_a_streak_fails_and_keeps_history(config, tmp_path):
  """Two skips at the end, fewer than max_nan_skips: used to exit 0 with step 8 saved."""
  config.train.update(dict(steps=8, ckpt_every=2, keep_checkpoints=2, max_nan_skips=20,
                           debug_nan_steps=(7, 8)))
  with pytest.raises(nan_guard.NonFiniteError,
                     match=r"ended inside a streak .*steps 7-8.*last good checkpoint \(step 6\)"):
    loop.train(config, str(tmp_path))
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    assert ckpt.all_steps() == [4, 6]  # keep_checkpoints = 2 did not drop good history


def test_a_run_whose_every_step_was_skipped_fails(config, tmp_path):
  # Shorter than max_nan_skips, so only the every-step rule can stop it (it used to exit 0).
  config.train.update(dict(steps=8, ckpt_every=2, keep_checkpoints=0, max_nan_skips=20,
                           debug_nan_steps=tuple(range(1, 9))))
  with pytest.raises(nan_guard.NonFiniteError,
                     match=r"every step of this run \(8, steps 1-8\).*provenance.*\{"):
    loop.train(config, str(tmp_path))


@pytest.mark.parametrize("ok", [True, False])
def test_guarded_update_and_ema(ok):
  """The in-step select: a finite step updates params, optimizer state and EMA
  (ema += (1 - decay) * (params - ema)); a non-finite one keeps all three and counts."""
  z = jnp.zeros((), jnp.int32)
  old = TrainState(step=z, params={"w": jnp.array([1.0, 2.0])}, opt_state=({"m": jnp.ones(2)},),
                   rng=jax.random.key(0), ema={"w": jnp.array([0.0, 0.0])}, nan_run=z + 2,
                   nan_total=z + 5)
  new_params, new_opt = {"w": jnp.array([3.0, jnp.nan])}, ({"m": jnp.full(2, jnp.inf)},)
  if ok:
    new_params, new_opt = {"w": jnp.array([3.0, 4.0])}, ({"m": jnp.full(2, 7.0)},)
  got = step_lib._guarded_update(old, jnp.bool_(ok), new_params, new_opt, 0.75)
  assert int(got.step) == 1
  if ok:
    np.testing.assert_allclose(got.params["w"], [3.0, 4.0])
    np.testing.assert_allclose(got.opt_state[0]["m"], [7.0, 7.0])
    np.testing.assert_allclose(got.ema["w"], [0.75, 1.0])
    assert (int(got.nan_run), int(got.nan_total)) == (0, 5)
  else:
    np.testing.assert_array_equal(got.params["w"], [1.0, 2.0])
    np.testing.assert_array_equal(got.opt_state[0]["m"], [1.0, 1.0])
    np.testing.assert_array_equal(got.ema["w"], [0.0, 0.0])
    assert (int(got.nan_run), int(got.nan_total)) == (3, 6)
