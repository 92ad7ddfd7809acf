"""Plain ArrayRecord files of raw records (`records.dumps` bytes), as a Grain source.

  write(path, records)                      # one file, group_size:1 (Grain's random access)
  src = ArrayRecordSource("/data/shards/*.array_record")
  src[i]                                     # raw record dict (None: not a record)

Reading goes through `grain.sources.ArrayRecordDataSource` (thread-safe, lazily opened readers,
picklable for Grain workers). Record i is record i of the concatenated files, in sorted path
order. As for JSONL (jsonl.py): `read(i)` = (the bytes, "<file>#<i in file>"), the record and
origin the pipeline hands to to_document (which reports bytes that are not a record as an
issue); `src[i]` = the parsed dict, or None.
"""

from __future__ import annotations

import bisect
import itertools
import os
from typing import Any, Iterable, Sequence

from array_record.python import array_record_module
import grain

from mogao_jax.data.sources import jsonl
from mogao_jax.data import records as records_lib

WRITER_OPTIONS = "group_size:1"


def write(path: str, records: Iterable[dict[str, Any]]) -> int:
  """Writes `records.dumps` of each record (bytes: as they are) to one ArrayRecord file;
  returns the count."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  w = array_record_module.ArrayRecordWriter(path, WRITER_OPTIONS)
  n = 0
  try:
    for rec in records:
      w.write(rec if isinstance(rec, bytes) else records_lib.dumps(rec))
      n += 1
  finally:
    w.close()
  return n


def write_shards(pattern: str, records: Iterable[dict[str, Any]], num_shards: int) -> list[str]:
  """Round-robin `records` over `num_shards` files `<pattern>-0000i-of-0000n.array_record`."""
  paths = [f"{pattern}-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]
  os.makedirs(os.path.dirname(os.path.abspath(pattern)), exist_ok=True)
  writers = [array_record_module.ArrayRecordWriter(p, WRITER_OPTIONS) for p in paths]
  try:
    for w, rec in zip(itertools.cycle(writers), records):
      w.write(rec if isinstance(rec, bytes) else records_lib.dumps(rec))
  finally:
    for w in writers:
      w.close()
  return paths


class ArrayRecordSource:
  """Random-access raw records of ArrayRecord files (a Grain data source: len + getitem)."""

  def __init__(self, paths: str | Sequence[str]):
    self.paths = jsonl.expand(paths)
    counts = []
    for p in self.paths:
      r = array_record_module.ArrayRecordReader(p)
      counts.append(r.num_records())
      r.close()
    self._ends = list(itertools.accumulate(counts))
    self._data = grain.sources.ArrayRecordDataSource(self.paths)

  def __len__(self) -> int:
    return self._ends[-1] if self._ends else 0

  def __repr__(self) -> str:
    return f"ArrayRecordSource({len(self.paths)} files, {len(self)} records)"

  def where(self, index: int) -> str:
    f = bisect.bisect_right(self._ends, index)
    return f"{self.paths[f]}#{index - (self._ends[f - 1] if f else 0)}"

  def read(self, index: int) -> tuple[bytes, str]:
    """(the stored `records.dumps` bytes, "<file>#<i>"): raw record + origin for to_document."""
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range for {len(self)} records")
    return self._data[index], self.where(index)

  def __getitem__(self, index) -> dict[str, Any] | None:
    """The parsed record, or None when the bytes are not a record (for offline tools)."""
    return jsonl.parse(self.read(index)[0])
