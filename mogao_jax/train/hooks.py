"""What the training loop calls between steps, so that train/ needs nothing above it.

A hook is any object with an ``every`` (int, 0 = never) and ``__call__(step, state, ctx)``;
the loop calls it after step ``step`` when ``step % every == 0`` and leaves its time out of the
throughput. The entry point plugs them in (``python -m mogao_jax.train`` builds the sample-grid
and periodic-eval hooks of eval/hooks.py from the config).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class Context:
  """What a hook may use besides the train state."""

  config: Any
  workdir: str
  tb: Any  # tensorboardX.SummaryWriter on the primary process, else None
  tokenizer_files: dict  # file name -> bytes (data/tokenizer.py from_files)


class Hook(Protocol):
  every: int

  def __call__(self, step: int, state: Any, ctx: Context) -> None:
    ...


def due(hooks, step: int) -> list:
  """The hooks to call after ``step``."""
  return [h for h in hooks if h.every and step % h.every == 0]
