"""The training log's UX (issue 31 item 8): metric names TensorBoard takes as they are (no
"Summary name ... is illegal" line per step), and no `nan s/step` on a window that holds only
the compiling first step of a run or a resume."""

import json
import logging

import numpy as np

from mogao_jax.train import metrics as metrics_lib


def _metrics(loss):
  return {"loss": np.float32(loss), "text_loss": np.float32(1.0), "flow_loss": np.float32(2.0),
          "grad_norm": np.float32(0.5), "n_real_tokens": np.float32(100.0)}


def test_first_window_and_issue_names_log_cleanly(config, tmp_path, caplog):
  caplog.set_level(logging.INFO)
  log = metrics_lib.MetricsLog(config, str(tmp_path), lambda step: 1e-3)
  extra = {"data/docs_read": 5.0, "data/eff_txt": 0.5, "data/eff_vis": 0.25, "data/issues/json/missing_field:text": 1.0,
           "data/source_docs/my web (2024)": 5.0}
  try:
    log.add(_metrics(3.0), 1.5)  # the first step after a start or a resume: compile time
    first = log.flush(1, extra)
    log.add(_metrics(2.0), None)
    second = log.flush(2, extra)
  finally:
    log.close()
  text = caplog.text
  assert "is illegal" not in text
  assert "nan" not in text.lower()
  assert "timing n/a (compile step)" in text and "s/step" in text
  assert "step_time_s" not in first and second["step_time_s"] > 0
  recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert recs[0]["data/issues/json/missing_field:text"] == 1.0  # metrics.jsonl keeps the name
  assert metrics_lib.tb_tag("train/data/issues/json/missing_field:text") == (
      "train/data/issues/json/missing_field_text")
  assert metrics_lib.tb_tag("train/data/source_docs/my web (2024)") == (
      "train/data/source_docs/my_web__2024_")
