"""``python -m mogao_jax.generate --workdir DIR --prompt "..." [--image in.png] --out DIR``

Samples one interleaved document from the newest checkpoint of a training workdir: the prompt
(after the optional context image), then free decoding, with an image generated whenever the
model writes `<img>` (or right away with --force_image). Writes OUT/index.html and OUT/img/*.png.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
from absl import logging

from mogao_jax import quiet_logs
from mogao_jax.sample import options
from mogao_jax.data import documents
from mogao_jax.sample import engine, load, report
from mogao_jax.train import restore

def define_flags() -> None:
  options.define()
  flags.adopt_module_key_flags(options)  # --help lists the shared flags (--workdir, --steps...)
  flags.DEFINE_string("prompt", "", "text prompt")
  flags.DEFINE_string("image", None, "optional context image (PNG/JPEG; resized to "
                      "data.image_size) placed before the prompt, e.g. to edit it")
  flags.DEFINE_string("out", None, "output directory (default WORKDIR/generate)")
  flags.DEFINE_bool("force_image", False, "open an image right after the prompt instead of "
                    "letting the model decide")
  flags.DEFINE_integer("num_samples", 1, "documents to sample (row seeds 0 .. n - 1)")


@restore.without_traceback
def main(argv):
  quiet_logs.install()
  options.workdir_or_usage_error(argv)
  f = options.FLAGS
  workdir = f.workdir
  config, params, step, tok, placement = load.load_on_mesh(workdir, f.use_ema, mesh=f.mesh)
  script = []
  if f.image:
    script.append(documents.Image(report.load_png(f.image, config.data.image_size)))
  if f.prompt:
    script.append(documents.Text(f.prompt))
  if f.force_image:
    script.append(engine.Gen())
  script.append(engine.Decode(f.max_tokens))
  sampler = options.make_sampler(config, params, tok, placement)
  docs = sampler.run([script] * f.num_samples, uids=range(f.num_samples))
  out = f.out or os.path.join(workdir, "generate")
  w = report.Writer(out)
  body = "".join(f"<h3>sample {i}</h3><p>{w.document(d, f's{i}_')}</p>"
                 for i, d in enumerate(docs))
  path = w.page(f"mogao_jax.generate: {workdir} step {step}", body)
  for i, d in enumerate(docs):
    logging.info("sample %d: %s", i, " ".join(
        p.text if isinstance(p, documents.Text) else "[image]" for _, p in d))
  print(f"wrote {path}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
