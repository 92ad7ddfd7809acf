"""Mixtures of sources: weights and per-source counters, per-shard parts, exact resume, the
state check, Grain worker processes over file sources."""

import json
import math

import numpy as np
import pytest

from mogao_jax.data import pipeline
from mogao_jax.data import records
from mogao_jax.data.sources import specs
from tests import sourcekit


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("mix")
  web = sourcekit.web_corpus(root / "web", 21, seed=0)
  ar = sourcekit.arrayrecord_corpus(str(root / "ar"), 13, seed=1)
  return {"web": web, "ar": ar}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  from tests.configs import tiny_config
  return pipeline.make_tokenizer(tiny_config(), str(tmp_path_factory.mktemp("tok")))


def _mix(config, files, web_weight=3.0, ar_weight=1.0):
  config.data.sources = [{"spec": f"jsonl:{files['web']}", "weight": web_weight, "name": "web"},
                         {"spec": f"arrayrecord:{files['ar']}", "weight": ar_weight,
                          "name": "ar"}]
  return config


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_world_configs_are_one_graph(config, tok):
  """data.source = "world" and data.sources = ["world"] are the same graph, batch for batch;
  an iterator state saved before the global data shards (no shard states) is refused."""
  a = pipeline.make_pipeline(config, tok)
  want = _take(a, 2)
  state = a.get_state()
  assert state["pipeline"]["sources"] == [["world", "world", 1.0]]
  config.data.sources = ["world"]
  sourcekit.same_batches(want, _take(pipeline.make_pipeline(config, tok), 2))
  old = pipeline.make_pipeline(config, tok)
  with pytest.raises(ValueError, match="older pipeline"):
    old.set_state(state["shards"]["0"])


def test_weights_and_per_source_counters(config, files, tok):
  it = pipeline.make_pipeline(_mix(config, files), tok)
  _take(it, 3)
  m = pipeline.data_metrics(it)
  web, ar = m["data/source_docs/web"], m["data/source_docs/ar"]
  assert web + ar == m["data/docs_read"]
  # Grain's proportional interleave: exact up to rounding, in each of the 8 data shards
  assert abs(web - 3 * ar) <= 3 * 8
  assert m["data/source_packed/web"] <= web and m["data/source_packed/ar"] <= ar
  assert m["data/docs_packed"] == m["data/source_packed/web"] + m["data/source_packed/ar"]
  # a world + file mixture: world documents are counted under their name too
  config.data.sources = ["world?weight=1", f"jsonl:{files['web']}?name=web"]
  m = pipeline.data_metrics(_mix_iter(config, tok))
  assert m["data/source_docs/world"] > 0 and m["data/source_docs/web"] > 0


def _mix_iter(config, tok):
  it = pipeline.make_pipeline(config, tok)
  next(it)
  return it


def test_each_data_shard_reads_its_own_part_of_every_source(config, files, tok):
  _mix(config, files)
  mix = specs.mixture(config.data)
  for k, spec in enumerate(mix):
    n = len(specs.open_source(spec))
    shards = []
    for p in range(2):
      ds = pipeline.source_documents(config, spec, k, shard=p, num_shards=2)
      m = len(range(p, n, 2))
      first = [ds[i].meta[records.ID] for i in range(m)]  # epoch 0: a permutation of the shard
      second = [ds[i].meta[records.ID] for i in range(m, 2 * m)]
      assert len(set(first)) == m and set(second) == set(first)
      shards.append(set(first))
    assert not shards[0] & shards[1], spec.name  # disjoint
    assert len(shards[0] | shards[1]) == n, spec.name  # union = the whole source
  b0, b1 = (next(pipeline.make_pipeline(config, tok, process_index=p, process_count=2))
            for p in range(2))
  assert b0["txt_token"].shape[0] == config.data.batch_size // 2
  assert not np.array_equal(b0["txt_token"], b1["txt_token"])


def test_resume_gives_the_next_20_batches(config, files, tok):
  _mix(config, files)
  it = pipeline.make_pipeline(config, tok)
  _take(it, 3)
  text = pipeline.state_to_json(it.get_state())
  want = _take(it, 20)  # > one epoch of each shard: reshuffled epochs resume too
  fresh = pipeline.make_pipeline(config, tok)
  fresh.set_state(pipeline.state_from_json(text))
  sourcekit.same_batches(_take(fresh, 20), want)
  assert pipeline.packing_stats(fresh) == pipeline.packing_stats(it)


def test_state_guard_names_what_differs(config, files, tok):
  _mix(config, files)
  two = pipeline.make_pipeline(config, tok, process_index=1, process_count=2)
  next(two)
  state = pipeline.state_from_json(pipeline.state_to_json(two.get_state()))
  one = pipeline.make_pipeline(config, tok)
  with pytest.raises(ValueError, match=r"holds data shards \[4, 5, 6, 7\], but this process "
                     r"builds \[0, 1, 2, 3\] too"):  # process 0's half is missing
    one.set_state(state)
  before = pipeline.make_pipeline(config.copy_and_resolve_references(), tok)  # weights 3:1
  _mix(config, files, web_weight=1.0)
  reweighted = pipeline.make_pipeline(config, tok)
  with pytest.raises(ValueError, match="sources"):
    reweighted.set_state(before.get_state())
  plain = config.copy_and_resolve_references()
  plain.data.sources = []
  world = pipeline.make_pipeline(plain, tok)
  with pytest.raises(ValueError, match="sources"):
    reweighted.set_state(world.get_state())
  with pytest.raises(ValueError, match="older pipeline"):  # a pre-shard world state
    reweighted.set_state(world.get_state()["shards"]["0"])
  json.loads(pipeline.state_to_json(reweighted.get_state()))  # still plain JSON


def test_too_few_records_for_the_processes(config, tmp_path, tok):
  path = sourcekit.web_corpus(tmp_path, 1)
  config.data.source = f"jsonl:{path}"
  with pytest.raises(ValueError, match="data shard 4 of 8 gets none.*num_shards"):
    pipeline.make_pipeline(config, tok, process_index=1, process_count=2)


@pytest.mark.slow  # Grain worker processes start and import JAX (~90 s): keeps the default suite inside its 20 minutes
def test_grain_workers_over_file_sources(config, files, tok):
  """num_workers > 0 (mp_prefetch): the same batches as in-process, and a state round trip."""
  _mix(config, files)
  want = _take(pipeline.make_pipeline(config, tok), 3)
  config.data.num_workers = 2
  it = pipeline.make_pipeline(config, tok)
  try:
    sourcekit.same_batches(_take(it, 2), want[:2])
    text = pipeline.state_to_json(it.get_state())
    fresh = pipeline.make_pipeline(config, tok)
    try:
      fresh.set_state(pipeline.state_from_json(text))
      sourcekit.same_batches([next(fresh)], want[2:])
    finally:
      fresh.close()
  finally:
    it.close()
  assert math.isfinite(pipeline.data_metrics(it)["data/eff_txt"])


@pytest.mark.slow
def test_training_on_a_mixture_logs_data_counters(config, files, tmp_path):
  """The real loop over a JSONL + ArrayRecord + world mixture: metrics.jsonl carries the
  per-source and per-issue counters; a resumed run continues the data stream."""
  from mogao_jax.train import loop
  _mix(config, files)
  config.data.sources = list(config.data.sources) + ["world?weight=1"]
  config.train.update(steps=2, log_every=1, ckpt_every=2)
  loop.train(config, str(tmp_path))
  recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in recs] == [1, 2]
  for name in ("web", "ar", "world"):
    assert recs[-1][f"data/source_docs/{name}"] > 0
  assert recs[-1]["data/docs_read"] >= recs[0]["data/docs_read"] > 0
  config.train.update(steps=3, allow_config_change=True)  # a longer run: an allowed change
  loop.train(config, str(tmp_path))
  recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert recs[-1]["step"] == 3 and recs[-1]["data/docs_read"] > recs[1]["data/docs_read"]
