"""Export a trained checkpoint: ``python -m mogao_jax.export --workdir DIR --format F --out DIR``.

Formats:
  torch     model.safetensors + config.json + torch_model.py (torch only): the whole model,
            same text logits and flow velocities for the same packed inputs
  hf-qwen2  the text pathway as a Hugging Face Qwen2 directory (Qwen2ForCausalLM.from_pretrained)

The checkpoint (sharded or not) is restored onto the CPU; `--step` picks one (default: latest),
`--params=ema` exports the EMA weights.
A list of every exported tensor is written to ``<out>/export_report.txt``.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
import jax
import ml_collections
import orbax.checkpoint as ocp

from mogao_jax import quiet_logs

FORMATS = ("torch", "hf-qwen2")

_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir holding checkpoints/")
_FORMAT = flags.DEFINE_enum("format", "torch", FORMATS, "export format")
_OUT = flags.DEFINE_string("out", None, "output directory")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
_PARAMS = flags.DEFINE_enum("params", "params", ("params", "ema"),
                            "which weights: the trained params or their EMA (train.ema_decay)")


def restore_params(workdir: str, step: int | None = None, which: str = "params"):
  """(config, params as numpy) of a checkpoint in ``workdir``, restored on the CPU;
  ``which="ema"`` takes the EMA weights instead."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise FileNotFoundError(f"--workdir={workdir}: no checkpoints/ directory there")
  from mogao_jax.train import checkpoint, optimizer  # pylint: disable=g-import-not-at-top
  from mogao_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint.Checkpointer(workdir, ml_collections.ConfigDict({"train": {}}))
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    config = ml_collections.ConfigDict(ckpt.saved_config(step))
    model = step_lib.make_model(config)
    tx, _ = optimizer.make_optimizer(config)
    abstract = jax.eval_shape(
        lambda k, b: step_lib.init_state(config, model, tx, k, b), jax.random.key(0),
        step_lib.example_batch(config, 1))
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu),
                            abstract)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    state = ckpt.manager.restore(step, args=args)["state"]
  finally:
    ckpt.close()
  params = getattr(state, which)
  if params is None:
    raise ValueError(f"--params={which}: the checkpoint has no EMA (train.ema_decay was 0)")
  return config, jax.device_get(params)


def export(workdir: str, fmt: str, out: str, step: int | None = None,
           which: str = "params") -> list[str]:
  from mogao_jax.convert import qwen2, torch_export  # pylint: disable=g-import-not-at-top
  from mogao_jax.model.config import ModelConfig  # pylint: disable=g-import-not-at-top
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt!r}: must be one of {FORMATS}")
  config, params = restore_params(workdir, step, which)
  cfg = ModelConfig.from_config(config.model)
  if fmt == "torch":
    report = torch_export.export(params, cfg, out)
  else:
    report = qwen2.export_text(params, cfg, out)
  with open(os.path.join(out, "export_report.txt"), "w") as f:
    f.write("\n".join(report) + "\n")
  return report


def main(argv):
  quiet_logs.install()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected positional arguments: {argv[1:]}")
  for flag in (_WORKDIR, _OUT):
    if not flag.value:
      raise app.UsageError(f"--{flag.name} is required")
  report = export(_WORKDIR.value, _FORMAT.value, _OUT.value, _STEP.value, _PARAMS.value)
  print(f"exported {len(report)} tensors ({_FORMAT.value}) to {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
