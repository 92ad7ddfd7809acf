"""The README against the code (issue 31 item 8): every `--config.X` override it shows names a
key of the experiment config its command (or paragraph) uses; the entry points' --help lists
the flags the README gives them."""

import re
import subprocess
import sys

from mogao_jax import config_args
from tests import partskit
from tests.configs import REPO

_OVERRIDE = re.compile(r"--config\.([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)")
_CONFIG = re.compile(r"--config[ =](experiments/[\w.]+\.py(?::\S*)?)")
_DEFAULT = "experiments/tiny_cpu.py"  # the entry point's default, and what local.sh runs


def readme_overrides(text: str) -> list[tuple[str, str, int]]:
  """(config path[:arg], key, line) of every `--config.key` in the README: the config is the
  last `--config experiments/X.py` before it in its paragraph, else the default. A config the
  README only imagines (my_qwen.py) counts as the default it would start from."""
  out = []
  for para_start, para in _paragraphs(text):
    for m in _OVERRIDE.finditer(para):
      before = [c.group(1) for c in _CONFIG.finditer(para[:m.start()])]
      path = before[-1] if before else _DEFAULT
      if not (REPO / path.split(":")[0]).is_file():
        path = _DEFAULT
      out.append((path, m.group(1), text.count("\n", 0, para_start + m.start()) + 1))
  return out


def _paragraphs(text: str):
  start = 0
  for block in re.split(r"(\n\s*\n)", text):
    if block.strip():
      yield start, block
    start += len(block)


def test_every_readme_override_names_a_key_of_its_config(tmp_path):
  text = (REPO / "README.md").read_text()
  found = readme_overrides(text)
  assert len(found) >= 25, found  # the parser sees the README's commands
  keys = {k for _, k, _ in found}
  assert {"train.eval_every", "data.source", "mesh.shape.fsdp", "init.vit"} <= keys
  parts = partskit.config_only_parts(tmp_path / "parts")
  bad = []
  for path, key, line in found:
    path = path.replace("$PARTS", parts)
    argv = ["train", "--config", str(REPO / path), f"--config.{key}=0"]
    bad += [f"README.md:{line}: {why}"
            for why in config_args.unknown_overrides(argv, str(REPO / _DEFAULT))]
  assert not bad, "\n".join(bad)


def test_the_parser_catches_an_unknown_key(tmp_path):
  text = ("run it:\n\npython -m mogao_jax.train --config experiments/tiny_cpu.py \\\n"
          "  --config.train.evals_every=3\n")
  ((path, key, line),) = readme_overrides(text)
  assert (path, key, line) == ("experiments/tiny_cpu.py", "train.evals_every", 4)
  argv = ["train", "--config", str(REPO / path), f"--config.{key}=0"]
  assert config_args.unknown_overrides(argv, str(REPO / _DEFAULT)) == [
      "--config.train.evals_every: train has no key 'evals_every' (it has: " +
      ", ".join(sorted(config_args.load_experiment(REPO / path).get_config().train.keys()))
      + ")"]


def test_entry_points_help_lists_the_shared_flags():
  """generate's and evaluate's --help show the flags sample/options.py defines for both."""
  for module in ("generate", "evaluate"):
    out = subprocess.run([sys.executable, "-m", f"mogao_jax.{module}", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert "Try --helpfull" in out.stdout, out.stderr[-2000:]  # absl's --help (exit 1)
    for flag in ("--workdir", "--steps", "--max_tokens"):
      assert f"  {flag}:" in out.stdout, (module, flag)
