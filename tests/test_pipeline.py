"""The Grain graph: contract, determinism, checkpoint round trip, process sharding."""

import ml_collections
import numpy as np
import pytest

from mogao_jax.data import batch as batch_lib
from mogao_jax.data import packing
from mogao_jax.data import pipeline
from mogao_jax.data.sources import specs


@pytest.fixture
def tok(config, tmp_path):
  return pipeline.make_tokenizer(config, str(tmp_path))


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batches_meet_the_contract(config, tok):
  d = config.data
  it = pipeline.make_pipeline(config, tok)
  b = next(it)
  pd = d.patch_size ** 2 * 3
  batch_lib.check_batch(b, d.l_txt, d.l_vis, pd, pd)
  assert b["txt_kind"].shape == (d.batch_size, d.l_txt)
  assert (b["txt_segment"][:, 0] == 1).all() and b["vis_kind"].max() == batch_lib.Kind.NVAE
  stats = pipeline.packing_stats(it)
  assert stats["rows"] >= d.batch_size and 0 < stats["efficiency"]["txt"] <= 1


def test_same_seed_same_batches_other_seed_differs(config, tok):
  a = _take(pipeline.make_pipeline(config, tok), 2)
  _assert_same(a, _take(pipeline.make_pipeline(config, tok), 2))
  config.seed = 1
  c = next(pipeline.make_pipeline(config, tok))
  assert not np.array_equal(a[0]["txt_token"], c["txt_token"])


def test_state_roundtrip_in_fresh_pipeline(config, tok):
  it = pipeline.make_pipeline(config, tok)
  _take(it, 2)
  text = pipeline.state_to_json(it.get_state())
  expected = _take(it, 2)
  fresh = pipeline.make_pipeline(config, tok)
  fresh.set_state(pipeline.state_from_json(text))
  _assert_same(_take(fresh, 2), expected)


def test_data_shards_read_disjoint_documents(config, tok):
  (world,) = specs.mixture(config.data)
  shards = [pipeline.source_documents(config, world, 0, shard=s, num_shards=2) for s in range(2)]
  firsts = [{shard[i].meta["world_index"] for i in range(200)} for shard in shards]
  assert all(len(f) == 200 for f in firsts)
  assert not firsts[0] & firsts[1]
  b0, b1 = (next(pipeline.make_pipeline(config, tok, process_index=p, process_count=2))
            for p in range(2))
  assert b0["txt_token"].shape[0] == config.data.batch_size // 2
  assert not np.array_equal(b0["txt_token"], b1["txt_token"])


def _global_batches(config, tok, n_proc, n, states=None):
  """n global batches as n_proc processes would build them (their local batches in process
  order); states: every process's saved state (a checkpoint's list) to resume from."""
  its = [pipeline.make_pipeline(config, tok, process_index=p, process_count=n_proc)
         for p in range(n_proc)]
  for it in its:
    if states is not None:
      it.set_state([pipeline.state_from_json(s) for s in states])
  out = [{k: np.concatenate([b[k] for b in bs]) for k in bs[0]}
         for bs in ([next(it) for it in its] for _ in range(n))]
  return out, [pipeline.state_to_json(it.get_state()) for it in its], its


def test_global_batches_do_not_depend_on_the_process_count(config, tok):
  """Issue 31 item 4: 1, 2 or 4 processes read the same global batches (4 data shards of 2
  rows), the global counters agree, and a position saved by 2 processes resumes on 1 or 4."""
  config.data.num_shards = 4
  one, _, its1 = _global_batches(config, tok, 1, 3)
  for n_proc in (2, 4):
    many, _, its = _global_batches(config, tok, n_proc, 3)
    _assert_same(many, one)
    merged = pipeline.data_metrics(its[0], lambda st: [pipeline.packing_stats(it) for it in its])
    assert merged == pipeline.data_metrics(its1[0])
  _, saved, _ = _global_batches(config, tok, 2, 2)
  for n_proc in (1, 4):
    resumed, _, _ = _global_batches(config, tok, n_proc, 1, states=saved)
    _assert_same(resumed, one[2:])
  config.data.num_shards = 2
  with pytest.raises(ValueError, match="num_shards"):
    pipeline.make_pipeline(config, tok).set_state(pipeline.state_from_json(saved[0]))
  config.data.num_shards = 3
  with pytest.raises(ValueError, match="config.data.num_shards=3 must divide"):
    pipeline.make_pipeline(config, tok)
  config.data.num_shards = 2
  with pytest.raises(ValueError, match="not a multiple of the process count 4"):
    pipeline.make_pipeline(config, tok, process_index=0, process_count=4)


def test_config_errors_name_the_key(config, tok, tmp_path):
  config.data.batch_size = 7
  with pytest.raises(ValueError, match="data.batch_size"):
    pipeline.make_pipeline(config, tok, process_count=2)
  config.data.batch_size = 8
  config.data.doc_weights = {"t2i": 1.0, "video": 1.0}
  with pytest.raises(ValueError, match="video"):
    pipeline.make_pipeline(config, tok)
  config.data.doc_weights = {"t2i": 1.0}
  config.model.latent_dim = 12
  with pytest.raises(ValueError, match="config.model.latent_dim"):
    pipeline.make_pipeline(config, tok)
  config.model.vocab_size = 16
  with pytest.raises(ValueError, match="config.model.vocab_size"):
    pipeline.make_tokenizer(config, str(tmp_path / "other"))


@pytest.mark.slow
def test_worker_processes_state_roundtrip(config, tok):
  config.data.num_workers = 2
  it = pipeline.make_pipeline(config, tok)
  next(it)
  text = pipeline.state_to_json(it.get_state())
  expected = next(it)
  fresh = pipeline.make_pipeline(config, tok)
  fresh.set_state(pipeline.state_from_json(text))
  _assert_same([next(fresh)], [expected])
  it.close()
  fresh.close()


def _text_tokens_per_doc(b):
  is_txt = b["txt_kind"] == batch_lib.Kind.TXT
  return [int((is_txt[r] & (b["txt_segment"][r] == s)).sum())
          for r in range(len(is_txt)) for s in set(b["txt_segment"][r]) - {0}]


def test_condition_dropout_reaches_the_world_stream(config, tok):
  """data.cond_dropout = 1 leaves t2i documents only BOS <img> </img> EOS as text (the prompt
  is dropped for classifier-free guidance); 0 keeps every prompt."""
  config.data.doc_weights = {"t2i": 1.0, "caption": 0.0, "vqa": 0.0, "edit": 0.0, "story": 0.0}
  config.data.cond_dropout = 0.0
  kept = _text_tokens_per_doc(next(pipeline.make_pipeline(config, tok)))
  assert min(kept) > 4
  config.data.cond_dropout = 1.0
  dropped = _text_tokens_per_doc(next(pipeline.make_pipeline(config, tok)))
  assert set(dropped) == {4}
  eval_kept = _text_tokens_per_doc(next(pipeline.make_pipeline(config, tok, split="eval")))
  assert min(eval_kept) > 4  # the eval split is never dropped


def test_world_metrics_name_one_source(config, tok):
  """Every world document kind (edit documents included, whose meta holds the scene being
  edited) is counted under the one source "world", not under a scene."""
  config.data.doc_weights = {"t2i": 0.2, "caption": 0.2, "vqa": 0.2, "edit": 0.2, "story": 0.2}
  it = pipeline.make_pipeline(config, tok)
  _take(it, 2)
  names = {k for k in pipeline.data_metrics(it) if k.startswith("data/source_")}
  assert names == {"data/source_docs/world", "data/source_packed/world"}


def test_rows_too_small_for_every_document_stop_the_pipeline(config, tok):
  # The world never runs out, so before the bound this looped forever (not even SIGTERM ended
  # it: no step boundary was reached).
  # Captions start with their image (16 VIT slots at 16 px), so no prefix of one fits 8 slots.
  config.data.doc_weights = ml_collections.ConfigDict({"caption": 1.0})
  config.data.l_txt, config.data.l_vis = 8, 4
  with pytest.raises(packing.PackingError, match=r"dropped 1000 documents in a row .*"
                     r"data\.l_txt = 8 \+ data\.l_vis = 4"):
    next(pipeline.make_pipeline(config, tok))
