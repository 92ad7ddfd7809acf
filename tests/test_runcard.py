"""The run card is complete, survives a resume, records failures; reruns are bit-identical."""

import json

import pytest

from mogao_jax.train import runcard
from mogao_jax.parallel import mesh as mesh_lib
from tests import runskit

_KEYS = ("config", "git", "packages", "jax", "seeds", "data", "start_time", "end_time",
         "status", "sessions", "command", "env", "python", "host")


def _card(tmp_path, config):
  mesh = mesh_lib.make_mesh(config)
  return runcard.write_run_card(config, str(tmp_path), mesh=mesh)


def test_card_is_complete(tmp_path, config):
  card = _card(tmp_path, config)
  on_disk = json.loads((tmp_path / runcard.CARD_FILE).read_text())
  assert on_disk == json.loads(json.dumps(card, default=str))
  assert set(_KEYS) <= set(card), set(_KEYS) - set(card)
  assert card["config"]["model"]["width"] == config.model.width  # the resolved config
  for pkg in ("jax", "flax", "optax", "orbax-checkpoint", "grain", "numpy"):
    assert card["packages"][pkg], pkg
  assert card["jax"]["device_count"] == 8 and card["jax"]["backend"] == "cpu"
  assert card["jax"]["mesh"]["shape"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert card["seeds"]["seed"] == config.seed and "train_noise" in card["seeds"]
  assert len(card["data"]["fingerprint"]) == 16 and card["data"]["source"] == "world"
  git = card["git"]
  if git.get("commit"):  # a source checkout: commit, and the diff when dirty
    assert len(git["commit"]) == 40 and isinstance(git["dirty"], bool)
    assert (tmp_path / runcard.DIFF_FILE).exists() == git["dirty"]
  assert card["end_time"] is None and card["status"] == "running"


def test_fingerprint_follows_the_data(tmp_path, config):
  a = runcard.data_fingerprint(config, str(tmp_path))
  assert a == runcard.data_fingerprint(config, str(tmp_path))
  config.data.doc_weights.t2i = 0.9  # any value but the default
  assert runcard.data_fingerprint(config, str(tmp_path))["fingerprint"] != a["fingerprint"]
  (tmp_path / "tokenizer.model").write_bytes(b"x")
  assert "tokenizer_sha256" in runcard.data_fingerprint(config, str(tmp_path))


def test_finish_and_resume_sessions(tmp_path, config):
  first = _card(tmp_path, config)
  (tmp_path / "metrics.jsonl").write_text('{"step": 4, "loss": 1.0}\n')
  done = runcard.finish_run_card(str(tmp_path))
  assert done["status"] == "finished" and done["end_time"] and done["last_step"] == 4
  assert done["completed"]  # tiny config: train.steps = 4
  config.optim.lr = 1e-4  # the resumed session changed a key
  _card(tmp_path, config)
  try:
    raise RuntimeError("boom")
  except RuntimeError:
    card = runcard.finish_run_card(str(tmp_path))
  assert card["start_time"] == first["start_time"] and len(card["sessions"]) == 2
  assert card["sessions"][1]["config_changed"] == ["optim.lr"]
  assert card["status"].startswith("failed: RuntimeError: boom")
  assert card["sessions"][0]["status"] == "finished"
  if card["git"].get("dirty"):  # each session keeps its own diff
    assert card["sessions"][1]["diff_file"] == "git_diff.2.patch"
    assert (tmp_path / "git_diff.2.patch").exists() and (tmp_path / runcard.DIFF_FILE).exists()


def test_finish_without_card_is_a_no_op(tmp_path):
  assert runcard.finish_run_card(str(tmp_path)) is None


def test_same_seed_gives_bit_identical_losses(tmp_path_factory, tmp_path):
  root = runskit.sweep_root(tmp_path_factory)
  again = runskit.train(tmp_path / "again", seed=0, tokenizer_from=root / "seed=0")
  want = runskit.losses(root / "seed=0")
  assert len(want) == runskit.STEPS
  assert runskit.losses(again) == want  # exact float equality, not approx
  assert runskit.losses(root / "seed=1") != want  # the seed does reach the run


def test_loop_writes_the_card(tmp_path_factory):
  """End to end: loop.train writes and finishes the card (once the hook is wired in)."""
  root = runskit.sweep_root(tmp_path_factory)
  card = runcard.read_run_card(str(root / "seed=0"))
  if card is None:
    pytest.skip("loop.train does not call runcard.write_run_card / finish_run_card yet")
  assert card["status"] == "finished" and card["completed"] and card["end_time"]
  assert card["last_step"] == runskit.STEPS and card["jax"]["mesh"]
  assert "tokenizer_sha256" in card["data"]
  assert card["config"]["seed"] == 0
