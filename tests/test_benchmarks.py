"""The benchmark harness in a tiny form: tables have their columns, and the analytic FLOP count
is right on a row small enough to count by hand. No timing is asserted anywhere."""

import math

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common, ectf_scaling, flops, memory, peer
from benchmarks import pipeline as bench_pipeline
from benchmarks import step as bench_step
from mogao_jax.data import batch as batch_lib
from mogao_jax.data.batch import Kind
from mogao_jax.model.config import ModelConfig
from mogao_jax.train import optimizer as optim_lib
from mogao_jax.train import step as step_lib
from mogao_jax.model.mogao import Mogao
from tests import rowkit


def _hand_batch(config, l_txt=8, l_vis=8):
  """One document: 3 text tokens (T = 0, 1, 2), then a 2x2 image with a noisy copy only (T = 3)."""
  m = config.model
  doc = [("txt", [5, 6, 7]), ("img", 1, 2, "N", np.zeros((4, m.latent_dim), np.float32))]
  return rowkit.stack([rowkit.build_row([doc], l_txt, l_vis, m.patch_dim, m.latent_dim)])


def test_flops_by_hand(config):
  mcfg = ModelConfig.from_config(config.model)
  assert (mcfg.width, mcfg.num_heads, mcfg.num_kv_heads, mcfg.head_dim, mcfg.mlp_dim,
          mcfg.depth, mcfg.vocab_size) == (32, 2, 1, 16, 64, 2, 128)
  b = _hand_batch(config)
  c = flops.counts(b, mcfg)
  # Text: causal over 3 tokens = 1 + 2 + 3 pairs. Each of the 4 NVAE patches reads the 3 text
  # tokens (earlier T) and the 4 patches of its own image (mask_same NVAE -> NVAE).
  assert (c["txt"], c["vis"], c["vit"], c["pairs"], c["vit_pairs"]) == (3, 4, 0, 6 + 4 * 7, 0)
  # Per token per layer: q 2*32*32, k and v 2*32*16 each, o 2*32*32; SwiGLU 3 * 2*32*64.
  per_tok = 2048 + 1024 + 1024 + 2048 + 12288
  f = flops.step_flops(b, mcfg)
  assert f["text_pathway"] == 3 * 2 * 3 * per_tok  # x3 fwd+bwd, depth 2, 3 text slots
  assert f["attention"] == 3 * 2 * 34 * (2 * 2 * 2 * 16)  # q.k and p.v over 2 heads of 16
  assert f["lm_head"] == 3 * 3 * 2 * 32 * 128
  assert f["vit"] == 0
  assert f["total"] == sum(v for k, v in f.items() if k != "total")
  dense = flops.step_flops(b, mcfg, padded=True)
  assert dense["attention"] == 3 * 2 * 16 ** 2 * 128  # every pair of the 16 slots


def test_pathway_count_matches_the_parameters(config):
  """Independent check: a pathway's matmul FLOPs per token = 2 x its kernels' sizes."""
  model = Mogao.from_config(config)
  tx, _ = optim_lib.make_optimizer(config)
  b = _hand_batch(config)
  state = jax.eval_shape(lambda k: step_lib.init_state(config, model, tx, k, b),
                         jax.random.key(0))
  txt = state.params["stack"]["layers"]["txt"]
  kernels = sum(math.prod(x.shape) for path, x in jax.tree_util.tree_leaves_with_path(txt)
                if "kernel" in jax.tree_util.keystr(path))
  mcfg = ModelConfig.from_config(config.model)
  assert flops.pathway_matmul_per_token(mcfg) * mcfg.depth == 2 * kernels


@pytest.mark.slow  # the step benchmark's compiles (~60-85 s): keeps the default suite inside its 20 minutes
def test_step_table(config):
  one = {k: v[0] for k, v in _hand_batch(config, 64, 64).items()}
  b = rowkit.stack([one, one])
  row = bench_step.measure(config, b, repeats=1, peak=(common.cpu_matmul_peak(128, 1), "cpu"),
                           name="micro")
  text = common.table([row], bench_step.MAIN_COLUMNS)
  parsed = common.parse_table(text)
  assert list(parsed[0]) == bench_step.MAIN_COLUMNS and parsed[0]["config"] == "micro"
  assert row["real_tokens"] == 2 * 7 and row["slots"] == 2 * 128
  assert 0 < row["MFU"] < row["padded_MFU"]
  assert math.isclose(sum(row[f"share_{p}"] for p in bench_step.PARTS), 1.0)
  # XLA's count (unrolled copy) covers the padded matmuls and attention plus elementwise work.
  assert 1.0 < row["xla/padded"] < 2.0, row["xla/padded"]


def test_step_overrides_name_the_row_and_the_bad_key():
  (name, config), = bench_step.load_configs(
      ["experiments/mogao_1b_8gpu.py"], ["data.batch_size=8", "model.dtype=float32"])
  assert name == "mogao_1b_8gpu data.batch_size=8 model.dtype=float32"
  assert (config.data.batch_size, config.model.dtype, config.model.width) == (8, "float32", 896)
  with pytest.raises(ValueError, match="model.widht"):
    bench_step.load_configs(["experiments/tiny_cpu.py:size=micro"], ["model.widht=3"])


@pytest.mark.slow  # compiles a second train step (~40 s cold on 2 loaded cores)
def test_step_table_blockwise(config):
  """The long-row comparison's columns on the blockwise attention (tiny rows, 4 blocks)."""
  config.model.attention, config.model.attention_block = "blockwise", 32
  b = rowkit.stack([{k: v[0] for k, v in _hand_batch(config, 64, 64).items()}])
  row = bench_step.measure(config, b, repeats=1, peak=(1e9, "cpu"), name="micro")
  assert list(common.parse_table(common.table([row], bench_step.LONG_COLUMNS))[0]) == \
      bench_step.LONG_COLUMNS
  assert row["attention"] == "blockwise" and row["temp_MiB"] > 0
  # One document in text block 0 and vision block 2: text reads text (0, 0); the image reads
  # the text and itself (2, 0), (2, 2). 3 of 16 pairs.
  assert row["blocks_computed"] == 3 / 16
  assert math.isnan(row["xla_GFLOP"])


@pytest.mark.slow  # ~47 s cold; # keep the default suite under 20 min cold on 2 cores; CI runs -m slow too
def test_ectf_table(config):
  rows = ectf_scaling.run(config, ns=(1, 2), repeats=1)
  parsed = common.parse_table(common.table(rows, ectf_scaling.COLUMNS))
  assert [r["N"] for r in parsed] == ["1", "2"]
  one, two = rows
  grid = config.model.vit_grid
  # N = 1: the same single pass. N = 2: ECTF adds the first image's VIT + CVAE copies once;
  # naive repeats the prompt and the first image in a second pass.
  assert one["ectf_slots"] == one["naive_slots"] == ectf_scaling.PROMPT + grid ** 2
  assert two["ectf_slots"] == ectf_scaling.PROMPT + 4 * grid ** 2 + ectf_scaling.BETWEEN
  assert two["naive_slots"] == one["naive_slots"] + two["ectf_slots"] - grid ** 2
  assert one["ectf_GFLOP"] == one["naive_GFLOP"] < two["ectf_GFLOP"] < two["naive_GFLOP"]
  # Outside attention the FLOPs add up per slot: the naive N = 2 passes hold the ECTF row's
  # slots plus the prompt once more (the first image's noisy copy is in both).
  m = ModelConfig.from_config(config.model)
  prompt = 3 * ectf_scaling.PROMPT * (m.depth * flops.pathway_matmul_per_token(m)
                                      + 2 * m.width * m.vocab_size)
  # ... plus the timestep conditioning, per image copy of each row (2 x capacity + 1 entries).
  entries = lambda b: 2 * batch_lib.vis_capacity(b["vis_kind"].shape[1], m.vit_grid,  # noqa
                                                 m.vis_images) + 1
  dim = config.model.latent_dim
  naive = [ectf_scaling.row_of(ectf_scaling.story(2, grid, dim, upto=i), config) for i in (1, 2)]
  ectf = ectf_scaling.row_of(ectf_scaling.story(2, grid, dim), config)
  cond = 3 * flops.conditioning_per_copy(m) * (sum(map(entries, naive)) - entries(ectf))
  assert two["naive_mm_GFLOP"] - two["ectf_mm_GFLOP"] == pytest.approx((prompt + cond) / 1e9)


@pytest.mark.slow  # ~44 s cold; # keep the default suite under 20 min cold on 2 cores; CI runs -m slow too
def test_memory_table(config):
  assert jax.device_count() == 8  # conftest
  rows = memory.run(config, meshes=((8, 1, 1), (1, 8, 1)))
  assert [r["error"] for r in rows] == ["", ""], rows
  dp, fsdp = rows
  assert dp["params/dev_MiB"] == pytest.approx(dp["params_MiB"])
  assert fsdp["params/dev_MiB"] < dp["params/dev_MiB"] / 2
  assert list(common.parse_table(common.table(rows, memory.COLUMNS))[0]) == memory.COLUMNS


def test_pipeline_table(config, tmp_path):
  row = bench_pipeline.measure(config, str(tmp_path), batches=2, name="tiny")
  assert list(common.parse_table(common.table([row], bench_pipeline.COLUMNS))[0]) == \
      bench_pipeline.COLUMNS
  assert row["examples/s"] > 0 and 0 < row["eff_txt"] <= 1 and 0 < row["eff_vis"] <= 1
  assert row["cpu_ms/batch"] > 0 and row["ms/batch"] == pytest.approx(1e3 * row["seconds"] / 2)


def test_pipeline_profile_charges_the_stages(config, tmp_path):
  read_options = grain.ReadOptions
  rows = {r["stage"]: r for r in bench_pipeline.profile(config, str(tmp_path), batches=2)}
  assert grain.ReadOptions is read_options  # the synchronous patch is undone
  assert set(rows) >= {label for label, _, _ in bench_pipeline.STAGES}
  top = [rows[lb]["share"] for lb, _, _ in bench_pipeline.STAGES if not lb.startswith(" ")]
  assert all(x > 0 for x in top) and sum(top) <= 1.0  # disjoint stages of one profile
  assert rows["  rendering (render)"]["ms"] <= rows["world documents (make_document)"]["ms"]
  assert rows["  tokenizer"]["ms"] <= rows["encoding (encode_document)"]["ms"]


def test_peer_skips_without_transfusion(monkeypatch, capsys):
  monkeypatch.setattr(peer, "transfusion_available", lambda: False)
  assert peer.main([]) == []
  assert "transfusion-pytorch is not installed; skipped" in capsys.readouterr().out


def test_peer_samples_hold_the_rows_content(config):
  """Each row -> one Transfusion sample: its text tokens and its image (once), in T order,
  filled with random text to exactly the requested transformer length."""
  torch = pytest.importorskip("torch")
  b = _hand_batch(config)  # 3 text tokens, then a 2 x 2 image (NVAE copy only)
  items = peer.row_entities(b, 0)
  assert [k for k, _ in items] == ["txt"] * 3 + ["img"]
  assert [v for _, v in items[:3]] == [5, 6, 7] and items[3][1].shape == (2, 2, 48)
  samples, n_img, n_txt = peer.transfusion_samples(b, 40, config.model.vocab_size)
  (sample,) = samples
  assert (n_img, n_txt) == (1, 3)
  assert sample[0].tolist() == [5, 6, 7] and sample[1].dtype == torch.float32
  # [sos] + 3 text + (image 4 + [som] [meta] '2,2' [eom] = 10) + filler + [eos], minus the
  # last token (next-token targets) = 40.
  assert 1 + 3 + 4 + peer.meta_tokens(2, 2) + len(sample[2]) + 1 - 1 == 40


@pytest.mark.slow  # dense / blockwise / flash compiles: keeps the default suite inside its 20 minutes
def test_attention_benchmark_rows():
  """benchmarks.attention: one row per implementation; the kernels visit fewer tiles than
  dense computes and hold fewer temporaries than its L x L mask and scores (no timing)."""
  from benchmarks import attention as bench_attention  # pylint: disable=g-import-not-at-top
  rows = bench_attention.main(["--slots", "1024", "--heads", "2", "--kv_heads", "1",
                               "--head_dim", "16", "--dtype", "float32", "--repeats", "1"])
  by = {r["impl"]: r for r in rows}
  assert set(by) == {"dense", "blockwise", "flash"}
  assert 0 < by["flash"]["tiles_visited"] < 1 and by["dense"]["tiles_visited"] == 1
  assert by["flash"]["temp_MiB"] < by["dense"]["temp_MiB"] / 2


def test_peer_at_its_own_scale_builds_its_samples():
  """--own: 8 rows of one document (3 text runs, 2 images); the peer's samples are exactly
  341 tokens with two 8 x 8 x 16 latents, ours the encoding of the same document."""
  pytest.importorskip("torch")
  config = peer.own_config()
  b = peer.own_batch(config)
  assert b["txt_kind"].shape == (8, 328) and b["vis_kind"].shape == (8, 192)
  assert ((b["txt_kind"] == Kind.TXT).sum(1) == 200).all()
  assert ((b["vis_kind"] == Kind.NVAE).sum(1) == 128).all()
  samples, n_img, n_txt = peer.transfusion_samples(b, peer.OWN["seq"], config.model.vocab_size)
  assert n_img == 16 and n_txt == 1600
  for s in samples:
    imgs = [x for x in s if x.ndim == 3]
    assert [tuple(x.shape) for x in imgs] == [(8, 8, 16)] * 2
    text = sum(len(x) for x in s if x.ndim == 1)
    assert 1 + text + sum(64 + peer.meta_tokens(8, 8) for _ in imgs) == 341


def test_profile_charges_ops_to_named_scopes():
  from benchmarks import profile  # pylint: disable=g-import-not-at-top
  assert profile.part_of("jit(train_step)/transpose(jvp(Mogao))/stack/while/body/closed_call/"
                         "layers/vis.ffn/mlp/jit(silu)") == "layers: MLP (SwiGLU)"
  assert profile.part_of("jit(train_step)/jvp(Mogao)/Mogao._embed/Mogao.embed_text_stream/"
                         "Mogao.image_features/vit/mul").startswith("vit")
  assert profile.part_of("").startswith("unnamed")
  assert profile.part_of("jit(train_step)/mul").startswith("optimizer")

  @jax.jit
  def f(x, w):
    with jax.named_scope("stack"), jax.named_scope("ffn"), jax.named_scope("mlp"):
      return jnp.sum(jnp.tanh(x @ w) @ w.T)

  # (The persistent compile cache keys programs without their metadata: a shape no other
  # test compiles keeps an older f's scopes out of this one.)
  x = jnp.ones((40, 40))
  compiled = f.lower(x, x).compile()
  names = profile.op_names(compiled.as_text())
  per_op, _ = profile.trace_ops(lambda s, b: (s, f(b, b)), _State(), x, steps=2)
  assert per_op and set(per_op) <= set(names)  # every traced op is an instruction of f
  charged = {profile.part_of(names[h]) for h in per_op}
  assert "layers: MLP (SwiGLU)" in charged


class _State:
  step = 0
