"""Tiny random Hugging Face models saved locally, and our model run on text-only rows, for the
conversion tests. Needs the `hf` and `torch` extras."""

import jax
import numpy as np
import optax

from mogao_jax.convert import qwen2
from mogao_jax.data import batch as batch_lib
from mogao_jax.train import step
from mogao_jax.model.mogao import Mogao
from tests import rowkit
from tests.configs import tiny_config

VOCAB = 96


def save_causal_lm(path, arch="qwen2", tied=False, seed=0):
  """A random Qwen2 (GQA: 4 heads, 2 kv heads) or bias-free Llama saved to `path`. Every
  parameter is perturbed so biases and norm scales are not at their (zero / one) init."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                tie_word_embeddings=tied, max_position_embeddings=128,
                rope_parameters={"rope_type": "default", "rope_theta": 10_000.0})
  torch.manual_seed(seed)
  if arch == "qwen2":
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
  else:
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(attention_bias=False,
                                                                   **common))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.eval().save_pretrained(path)
  return model


def hf_logits(model, ids):
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    return model(torch.tensor([ids])).logits[0].float().numpy()


def config_for(path, scan=True, l_txt=16):
  c = tiny_config()
  c.model.update(qwen2.model_keys(path))
  c.model.scan_layers = scan
  c.data.update(dict(l_txt=l_txt, l_vis=4, batch_size=1))
  return c


def init_state(c, tx=None, perturb=False):
  """(model, TrainState). Eager init (its per-op compiles are shared by every config; one jit
  per config compiles far longer on CPU). perturb: every parameter + 0.05 N(0, 1), drawn on the
  host, so zero-initialised heads and AdaLN terms matter too."""
  model = Mogao.from_config(c)
  state = step.init_state(c, model, tx or optax.sgd(0.0), jax.random.key(0),
                          batch_lib.example_batch(c, 1))
  if perturb:
    rng = np.random.default_rng(1)
    params = jax.tree.map(
        lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(np.float32),
        jax.device_get(state.params))
    state = state.replace(params=params)
  return model, state


def init_params(c):
  model, state = init_state(c)
  return model, jax.device_get(state.params)


def text_row(c, ids):
  return rowkit.stack([rowkit.build_row([[("txt", list(ids))]], c.data.l_txt, c.data.l_vis,
                                        c.model.patch_dim, c.model.latent_dim)])


def our_logits(model, params, c, ids):
  row = text_row(c, ids)
  vis_t = np.ones(row["vis_kind"].shape, np.float32)
  logits, _ = jax.jit(model.apply)({"params": params}, batch_lib.model_inputs(row), vis_t)
  return np.asarray(logits)[0, :len(ids)]


def rel_err(a, b):
  """max |a - b| / max |b|: the tolerance measure of the parity tests."""
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def hf_tensor(path, name):
  from mogao_jax.convert import tensors  # pylint: disable=g-import-not-at-top
  return np.asarray(tensors.read_dir(path)[name])
