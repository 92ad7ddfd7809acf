"""absl flags shared by `python -m mogao_jax.generate` and `python -m mogao_jax.evaluate`."""

from __future__ import annotations

from absl import app
from absl import flags

from mogao_jax.sample import engine
from mogao_jax.sample import load
from mogao_jax.sample.sampling import SampleConfig

FLAGS = flags.FLAGS


def define() -> None:
  """Defines the shared flags (idempotent). Entry points call it under __main__ only, so that
  importing them (tests, other entry points' flags such as --workdir) defines nothing."""
  if "max_len" in FLAGS:
    return
  _d = SampleConfig()
  flags.DEFINE_string("workdir", None, "training workdir (config.json, tokenizer, checkpoints/)")
  flags.DEFINE_integer("steps", _d.steps, "Euler steps of the image ODE (noise t=0 -> data t=1)")
  flags.DEFINE_float("shift", _d.shift, "time-grid shift of the image ODE (1 = uniform)")
  flags.DEFINE_float("g_txt", _d.g_txt, "text guidance scale (1 = none; > 1 needs a run trained "
                     "with data.cond_dropout > 0: see SampleConfig)")
  flags.DEFINE_float("g_img", _d.g_img, "image guidance scale (1 = none)")
  flags.DEFINE_float("temperature", _d.temperature, "text sampling temperature (0 = greedy)")
  flags.DEFINE_integer("top_k", _d.top_k, "top-k text sampling (0 = off)")
  flags.DEFINE_float("top_p", _d.top_p, "nucleus text sampling (1 = off)")
  flags.DEFINE_integer("max_tokens", 32, "max sampled text tokens per decode run")
  flags.DEFINE_integer("max_len", 0, "KV-cache slots per row (0 = data.l_txt + data.l_vis + "
                       "max_tokens, rounded up to 64)")
  flags.DEFINE_integer("batch_size", 8, "rows sampled together")
  flags.DEFINE_integer("seed", 0, "sampling seed")
  flags.DEFINE_bool("use_ema", True, "sample from the EMA params when the checkpoint has them")
  flags.DEFINE_string("mesh", load.RUN, "where the params go: 'run' (the run's mesh.shape and "
                      "mesh.rules, restored sharded as training lays them out), 'single' (one "
                      "device), or mesh.shape overrides as axis=size pairs, e.g. "
                      "'data=1,fsdp=-1' (the run's rules map the logical axes onto them)")
  flags.register_validator("mesh", _valid_mesh)


def _valid_mesh(value: str) -> bool:
  try:
    load.parse_mesh(value)
  except ValueError as e:
    raise flags.ValidationError(str(e)) from e
  return True


def workdir_or_usage_error(argv) -> str:
  """The --workdir of an entry point; absl usage errors for what it cannot run with."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected positional arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  return FLAGS.workdir


def sample_config() -> SampleConfig:
  return SampleConfig(temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
                      steps=FLAGS.steps, shift=FLAGS.shift, g_txt=FLAGS.g_txt,
                      g_img=FLAGS.g_img)


def make_sampler(config, params, tokenizer, placement=None):
  return engine.Sampler.from_config(config, params, tokenizer, placement=placement,
                                    **sampler_kwargs())


def sampler_kwargs() -> dict:
  """The flags' keyword arguments of Sampler.from_config (max_tokens included)."""
  return dict(max_tokens=FLAGS.max_tokens, capacity=FLAGS.max_len, batch_size=FLAGS.batch_size,
              sc=sample_config(), seed=FLAGS.seed)
