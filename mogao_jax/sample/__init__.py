"""Sampling from a trained Mogao (MOGAO.md section 7, issue 8): KV-cached text decoding, the
flow-matching ODE sampler with multi-modal guidance, and interleaved text + image generation.

  engine.Sampler          prefill, decode, generate images; scripts of Text / Image / Gen / Decode
  cache.KVCache           per-layer rotated K/V + slot metadata, fixed capacity
  sampling                token sampling (greedy / temperature / top-k / top-p), guidance, ODE
  slots                   prompt parts -> slot arrays (the same T/H/W/image-id rules as packing)
  load                    a training workdir -> config, params, step, tokenizer (train/restore.py)
  options                 the absl flags of generate / evaluate -> Sampler.from_config
  report                  HTML pages + PNGs
"""
