"""The reference the CPU benchmark compares against: transformers' torch LLaVA training step.

Same hyperparameters as our model config (mapped by `convert/hf_config.py`), same batch, AdamW over the same trainable parts, eager
PyTorch (what LLaVA itself trains with). Imported lazily by `bench.py`: torch is a test/bench
extra, never needed to train.
"""

import statistics
import time

import numpy as np
import torch
import transformers

from llava_jax.convert import hf_config


def torch_inputs(batch: dict, image_token_id: int, image_tokens: int) -> dict:
  """Our Batch contract → LlavaForConditionalGeneration.forward keyword arguments.

  Single-sample rows only (segment ids 0/1): HF's attention mask cannot express packing.
  transformers fills image tokens in reading order from a flat list of images, so each row
  contributes as many images as it has runs of image tokens.
  """
  if np.max(batch["segment_ids"]) > 1:
    raise ValueError("batch['segment_ids']: packed rows have no transformers equivalent.")
  runs = (batch["input_ids"] == image_token_id).sum(axis=1) // image_tokens
  pixels = np.concatenate([batch["pixels"][b, :n] for b, n in enumerate(runs)], axis=0)
  return dict(
      input_ids=torch.from_numpy(batch["input_ids"].astype(np.int64)),
      attention_mask=torch.from_numpy((batch["segment_ids"] > 0).astype(np.int64)),
      position_ids=torch.from_numpy(batch["positions"].astype(np.int64)),
      # Text-only batches: no pixel_values at all, so the vision tower does not run.
      pixel_values=(torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
                    if len(pixels) else None),
      labels=torch.from_numpy(batch["labels"].astype(np.int64)),
  )


def make_torch_train_step(model_cfg, batch: dict, *, image_tokens: int, train_llm: bool,
                          train_projector: bool, learning_rate: float, grad_clip_norm: float,
                          seed: int = 0):
  """(step() -> loss, info dict): one eager torch training step (forward, backward, clip, AdamW)
  on `batch`, for timing alternately with ours.

  Gradients are clipped to `grad_clip_norm` (<= 0: not clipped) as HF's Trainer does for LLaVA.
  """
  torch.manual_seed(seed)
  model = transformers.LlavaForConditionalGeneration(hf_config.to_hf(model_cfg))
  model.train()
  for p in model.model.vision_tower.parameters():
    p.requires_grad_(False)
  for p in model.model.multi_modal_projector.parameters():
    p.requires_grad_(train_projector)
  for p in list(model.model.language_model.parameters()) + list(model.lm_head.parameters()):
    p.requires_grad_(train_llm)
  trainable = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
  inputs = torch_inputs(batch, model_cfg.image_token_id, image_tokens)

  def step() -> float:
    loss = model(**inputs).loss
    loss.backward()
    if grad_clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(trainable, grad_clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())

  return step, dict(torch_version=torch.__version__, threads=torch.get_num_threads(),
                    trainable_params=sum(p.numel() for p in trainable))


def time_torch_train_step(model_cfg, batch: dict, *, steps: int, warmup: int = 1,
                          **step_kw) -> dict:
  """Median wall time of `steps` torch training steps (`make_torch_train_step`)."""
  step, info = make_torch_train_step(model_cfg, batch, **step_kw)
  for _ in range(warmup):
    step()
  times, losses = [], []
  for _ in range(steps):
    start = time.perf_counter()
    losses.append(step())
    times.append(time.perf_counter() - start)
  return dict(step_time_s=statistics.median(times), step_times_s=times, losses=losses, **info)
