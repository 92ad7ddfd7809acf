"""Scenes of the built-in world: objects, the train/eval split, sampling and scene edits.

A scene holds 1 to 4 objects, each in its own cell of a 3x3 grid, so objects never overlap and
a cell names an object uniquely. Scene edits (`Op`) are plain JSON dicts, shared by editing
documents, stories and the scorer, which re-applies them to know the expected result.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 210),
    "cyan": (40, 210, 220),
}
# Object extent (circle diameter, square side, triangle base and height) as a fraction of the
# image side, and the grid's cell centres. The objects are about as large as a 3x3 grid allows,
# for learnability: at 32 px small = 8.3 px and large = 12.8 px, i.e. 2.1 and 3.2 patches of
# 4 px, so shapes differ over whole patches (a free 3x3 layout caps objects at ~10 px). Small
# objects fit side by side (0.26 + the 0.04 gap = the 0.3 spacing); a large object needs its 8
# neighbouring cells empty (see `valid`). Centres at 0.2 and 0.8 keep large objects inside.
SIZES = {"small": 0.26, "large": 0.40}
CENTRES = (0.2, 0.5, 0.8)
GAP = 0.04  # min background gap (1.3 px at 32 px), so the scorer separates same-colour objects
ROWS = ("top", "middle", "bottom")
COLS = ("left", "centre", "right")
BACKGROUND = (0, 0, 0)
MAX_OBJECTS = 4
EVAL_PERMILLE = 100  # 10% of scenes, by a hash of the canonical scene, are held out for eval
SPLITS = ("train", "eval")
# Moves by one cell; (drow, dcol).
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
OPS = ("add", "remove", "recolour", "resize", "move")

Op = dict  # {"op": one of OPS, "cell": [row, col], ...}; see `apply_op`


@dataclasses.dataclass(frozen=True, order=True)
class Object:
  row: int  # 0..2 = top, middle, bottom
  col: int  # 0..2 = left, centre, right
  shape: str
  colour: str
  size: str

  def to_json(self) -> dict[str, Any]:  # dataclasses.asdict's dict, without its deep copy
    return {"row": self.row, "col": self.col, "shape": self.shape, "colour": self.colour,
            "size": self.size}


@dataclasses.dataclass(frozen=True)
class Scene:
  """Objects in canonical (row-major cell) order; equality is scene equality."""

  objects: tuple[Object, ...]

  def __post_init__(self):
    object.__setattr__(self, "objects", tuple(sorted(self.objects)))

  def to_json(self) -> dict[str, Any]:
    return {"objects": [o.to_json() for o in self.objects]}

  @staticmethod
  def from_json(d: Mapping[str, Any] | "Scene") -> "Scene":
    if isinstance(d, Scene):
      return d
    return Scene(tuple(Object(**o) for o in d["objects"]))

  def at(self, row: int, col: int) -> Object | None:
    for o in self.objects:
      if (o.row, o.col) == (row, col):
        return o
    return None

  def key(self) -> str:
    return ";".join(f"{o.row}{o.col}{o.shape}{o.colour}{o.size}" for o in self.objects)


def _apart(a: Object, b: Object) -> bool:
  """Whether the bounding boxes of a and b are at least GAP apart along some axis."""
  need = (SIZES[a.size] + SIZES[b.size]) / 2 + GAP - 1e-9
  return (abs(CENTRES[a.col] - CENTRES[b.col]) >= need
          or abs(CENTRES[a.row] - CENTRES[b.row]) >= need)


def valid(scene: Scene) -> bool:
  """1..MAX_OBJECTS objects in distinct cells, pairwise apart (no overlap, a visible gap)."""
  objs = scene.objects
  if not 1 <= len(objs) <= MAX_OBJECTS or len({(o.row, o.col) for o in objs}) != len(objs):
    return False
  return all(_apart(a, b) for i, a in enumerate(objs) for b in objs[i + 1:])


def split_of(scene: Scene) -> str:
  """"train" or "eval": a stable hash of the canonical scene, so the splits are disjoint."""
  h = int.from_bytes(hashlib.blake2b(scene.key().encode(), digest_size=8).digest(), "little")
  return "eval" if h % 1000 < EVAL_PERMILLE else "train"


def check_split(split: str) -> str:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
  return split


def _pick(rng: np.random.Generator, seq):
  return seq[int(rng.integers(len(seq)))]


def random_objects(rng: np.random.Generator, n: int, shapes: Iterable[str] | None = None,
                   colours: Iterable[str] | None = None) -> Scene:
  """n objects in distinct random cells; per-object shapes/colours when given, else random.

  Sizes are drawn uniformly, except that an object stays small where a large one would crowd
  a neighbour (so crowded scenes hold fewer large objects)."""
  cells = rng.choice(9, size=n, replace=False)
  shapes = list(shapes) if shapes is not None else [_pick(rng, SHAPES) for _ in range(n)]
  colours = list(colours) if colours is not None else [_pick(rng, list(COLOURS))
                                                       for _ in range(n)]
  objs = [Object(int(c) // 3, int(c) % 3, str(s), str(k), "small")
          for c, s, k in zip(cells, shapes, colours)]
  for i in rng.permutation(n):
    big = dataclasses.replace(objs[i], size="large")
    if rng.random() < 0.5 and all(_apart(big, o) for j, o in enumerate(objs) if j != i):
      objs[i] = big
  return Scene(tuple(objs))


def sample_scene(rng: np.random.Generator) -> Scene:
  """A general scene: 1 to 4 objects, every attribute uniform."""
  return random_objects(rng, int(rng.integers(1, MAX_OBJECTS + 1)))


def sample_in_split(rng: np.random.Generator, split: str,
                    sampler: Callable[[np.random.Generator], Scene], tries: int = 10_000) -> Scene:
  """Rejection-samples `sampler(rng)` until the scene falls in `split`."""
  check_split(split)
  for _ in range(tries):
    x = sampler(rng)
    if split_of(x) == split:
      return x
  raise RuntimeError(f"no {split} scene in {tries} draws; the sampler's scene space is too small")


# --- scene edits ---------------------------------------------------------------------------


def apply_op(scene: Scene | Mapping, op: Op) -> Scene:
  """The scene after `op`; raises ValueError if the op does not apply to this scene."""
  scene = Scene.from_json(scene)
  kind, cell = op["op"], tuple(op["cell"])
  target = scene.at(*cell)
  rest = tuple(o for o in scene.objects if (o.row, o.col) != cell)
  if kind == "add":
    if target is not None or len(scene.objects) >= MAX_OBJECTS:
      raise ValueError(f"cannot add at occupied cell {cell} or to a full scene")
    return Scene(rest + (Object(*cell, op["shape"], op["colour"], op["size"]),))
  if target is None:
    raise ValueError(f"op {op} names empty cell {cell}")
  if kind == "remove":
    return Scene(rest)
  if kind == "recolour":
    return Scene(rest + (dataclasses.replace(target, colour=op["colour"]),))
  if kind == "resize":
    return Scene(rest + (dataclasses.replace(target, size=op["size"]),))
  if kind == "move":
    dr, dc = DIRECTIONS[op["direction"]]
    r, c = cell[0] + dr, cell[1] + dc
    if not (0 <= r < 3 and 0 <= c < 3) or scene.at(r, c) is not None:
      raise ValueError(f"cannot move {cell} {op['direction']}: off the grid or occupied")
    return Scene(rest + (dataclasses.replace(target, row=r, col=c),))
  raise ValueError(f"unknown op {kind!r}; known: {OPS}")


def candidate_ops(scene: Scene, kinds: Iterable[str] = OPS) -> list[Op]:
  """Every op of `kinds` that applies to `scene` and leaves a `valid` scene."""
  return [op for op in _raw_ops(scene, kinds) if valid(apply_op(scene, op))]


def _raw_ops(scene: Scene, kinds: Iterable[str]) -> list[Op]:
  """The ops of `kinds` that apply to `scene`; the result may still crowd or overlap."""
  adds, others = _ops(scene, kinds)
  return list(adds) + others


class _Adds:
  """The "add" ops into the free cells as a lazy sequence in (cell, shape, colour, size)
  order: hundreds of ops, of which `sample_op` usually builds one or two."""

  _COLOURS, _SIZES = tuple(COLOURS), tuple(SIZES)
  _PER_CELL = len(SHAPES) * len(COLOURS) * len(SIZES)

  def __init__(self, free: list[tuple[int, int]]):
    self.free = free

  def __len__(self) -> int:
    return len(self.free) * self._PER_CELL

  def __getitem__(self, i) -> Op:
    cell, rest = divmod(int(i), self._PER_CELL)
    shape, rest = divmod(rest, len(self._COLOURS) * len(self._SIZES))
    colour, size = divmod(rest, len(self._SIZES))
    r, c = self.free[cell]
    return {"op": "add", "cell": [r, c], "shape": SHAPES[shape],
            "colour": self._COLOURS[colour], "size": self._SIZES[size]}

  def __iter__(self):
    return (self[i] for i in range(len(self)))


def _ops(scene: Scene, kinds: Iterable[str]) -> tuple[_Adds, list[Op]]:
  """(the "add" ops, lazily; the other ops, per object: remove, recolours, resizes, moves)."""
  free = [(r, c) for r in range(3) for c in range(3) if scene.at(r, c) is None]
  kinds = set(kinds)
  adds = _Adds(free if "add" in kinds and len(scene.objects) < MAX_OBJECTS else [])
  ops = []
  for o in scene.objects:
    cell = [o.row, o.col]
    if "remove" in kinds and len(scene.objects) > 1:
      ops.append({"op": "remove", "cell": cell})
    if "recolour" in kinds:
      ops += [{"op": "recolour", "cell": cell, "colour": k} for k in COLOURS if k != o.colour]
    if "resize" in kinds:
      ops += [{"op": "resize", "cell": cell, "size": z} for z in SIZES if z != o.size]
    if "move" in kinds:
      for d, (dr, dc) in DIRECTIONS.items():
        r, c = o.row + dr, o.col + dc
        if 0 <= r < 3 and 0 <= c < 3 and (r, c) in free:
          ops.append({"op": "move", "cell": cell, "direction": d})
  return adds, ops


def sample_op(rng: np.random.Generator, scene: Scene, split: str,
              kinds: Iterable[str] = OPS) -> Op | None:
  """A random op (kind first, uniformly, then an instance) whose result stays in `split`.

  Choosing the kind first keeps "add" (hundreds of instances) from drowning the others; ops
  are tried in random order and only until one fits, since checking every result is slow."""
  adds, others = _ops(scene, kinds)
  by_kind: dict[str, Sequence[Op]] = {"add": adds} if len(adds) else {}
  for op in others:
    by_kind.setdefault(op["op"], []).append(op)
  for kind in rng.permutation(sorted(by_kind)):
    ops = by_kind[str(kind)]
    for j in rng.permutation(len(ops)):
      op = ops[j]
      after = apply_op(scene, op)
      if valid(after) and split_of(after) == split:
        return op
  return None
