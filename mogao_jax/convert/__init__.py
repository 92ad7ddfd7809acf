"""Checkpoint conversion: pretrained parts in (Qwen2, SigLIP, AutoencoderKL), trained model out
(Hugging Face Qwen2 directory, safetensors + a self-contained PyTorch module).

Public API:
  qwen2.model_keys(dir) / check_config(model_cfg, dir) / import_text(params, dir) /
    export_text(params, model_cfg, out_dir)
  siglip.load_config(dir) / model_keys(dir) / import_tower(params, dir, prefix="")
  vae.load(dir) -> (VAEConfig, params, report)
  init.apply(config, params) / apply_to_state(config, state, param_shardings, workdir)
  torch_export.export(params, model_cfg, out_dir); torch_model.Mogao.from_dir(out_dir)
  python -m mogao_jax.export --workdir DIR --format torch|hf-qwen2 --out DIR

Every name correspondence lives in `mapping.py`, one table per format, read by both directions.
Nothing here imports torch or transformers; those are only needed to *use* the outputs.
"""
