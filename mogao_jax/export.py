"""Export a trained checkpoint: ``python -m mogao_jax.export --workdir DIR --format F --out DIR``.

Formats:
  torch     model.safetensors + config.json + torch_model.py (torch only): the whole model,
            same text logits and flow velocities for the same packed inputs; torch_generate.py +
            generation.json (+ vae/, a diffusers AutoencoderKL, for a VAE run): prompt -> text
            and images in PyTorch alone
  hf-qwen2  the text pathway as a Hugging Face Qwen2 directory (Qwen2ForCausalLM.from_pretrained)

Both write the run's tokenizer as AutoTokenizer files (tokenizer.json + tokenizer_config.json;
convert/tokenizer_export.py): it encodes text exactly as the run did.

The checkpoint (sharded or not) is restored onto the CPU; `--step` picks one (default: latest),
`--params=ema` exports the EMA weights.
A list of every exported tensor is written to ``<out>/export_report.txt``.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
from absl import logging
import jax

from mogao_jax import quiet_logs
from mogao_jax.convert import qwen2, tokenizer_export, torch_export
from mogao_jax.model.config import ModelConfig
from mogao_jax.train import restore

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
  config, step = restore.restore_config(workdir, step)
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  params, _, _ = restore.restore_params(workdir, step=step, which=which, sharding=cpu,
                                        what=f"--workdir={workdir} --params")
  return config, jax.device_get(params)


def export(workdir: str, fmt: str, out: str, step: int | None = None,
           which: str = "params") -> list[str]:
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt!r}: must be one of {FORMATS}")
  config, step = restore.restore_config(workdir, step)
  config, params = restore_params(workdir, step, which)
  tok = _tokenizer_or_none(workdir, step)
  cfg = ModelConfig.from_config(config.model)
  if fmt == "torch":
    report = torch_export.export(params, cfg, out)
  else:
    report = qwen2.export_text(params, cfg, out)
  if tok is None:
    report.append("no tokenizer in the run (neither WORKDIR/tokenizer.model nor one in the "
                  "checkpoint): no tokenizer files, no torch_generate.py")
    logging.warning("%s", report[-1])
  else:
    if fmt == "torch":
      report += torch_export.write_generation(config, tok, out)
    report += tokenizer_export.write(out, tok.model_proto, getattr(tok, "config_bytes", None))
  with open(os.path.join(out, "export_report.txt"), "w") as f:
    f.write("\n".join(report) + "\n")
  return report


def _tokenizer_or_none(workdir: str, step: int):
  try:
    return restore.load_tokenizer(workdir, step)
  except restore.WorkdirError:
    return None


@restore.without_traceback
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
