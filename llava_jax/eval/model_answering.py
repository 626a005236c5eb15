"""`AnswerFn` over a model loaded in this process: batched greedy (or sampled) generation.

Each prompt becomes one user message (its image first, as LLaVA's evaluation scripts put it)
through the model's own chat encoding (`encode_messages`: the model's template and image
placement, `<image>` expansion, CLIP preprocessing); a batch is decoded together by `model.generate`. A prompt that
does not fit the context is answered with "" (scored as wrong) instead of stopping the run.
"""

import numpy as np

from llava_jax.eval import answering
from llava_jax.infer import prompting


def model_answer_fn(model, *, max_new_tokens: int = 256,
                    temperature: float = 0.0) -> answering.AnswerFn:
  """`model`: the object `llava_jax.load` returns."""
  tokenizer = model.tokenizer
  eos_id = tokenizer.eos_token_id

  def answer(prompts: list[str], images: list[str | None]) -> list[str]:
    encoded = {}
    for i, (prompt, image) in enumerate(zip(prompts, images)):
      parts = [prompt]
      if image is not None:
        with open(image, "rb") as f:
          parts.insert(0, f.read())
      try:
        encoded[i] = model.encode_messages([prompting.Message("user", parts)])
      except prompting.PromptError:
        pass  # Too long, or an unreadable image: answered "" below.
    answers = [""] * len(prompts)
    if not encoded:
      return answers
    rows = list(encoded)
    ids = [encoded[i][0] for i in rows]
    length = max(map(len, ids))
    budget = min(max_new_tokens, model.context_len - length)
    if budget < 1:
      return answers
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    ids_BxT = np.full((len(rows), length), pad, np.int32)
    mask_BxT = np.zeros((len(rows), length), np.int32)
    for b, row_ids in enumerate(ids):
      ids_BxT[b, :len(row_ids)] = row_ids
      mask_BxT[b, :len(row_ids)] = 1
    most_images = max(encoded[i][1].shape[0] for i in rows)
    pixels_BxMxHxWx3 = np.stack([_pad_images(encoded[i][1], most_images) for i in rows])
    new_BxN = model.generate(ids_BxT, pixels_BxMxHxWx3, attention_mask=mask_BxT,
                             max_new_tokens=budget, temperature=temperature)
    for b, i in enumerate(rows):
      tokens = list(new_BxN[b])
      if eos_id in tokens:
        tokens = tokens[:tokens.index(eos_id)]
      answers[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return answers

  return answer


def load_answer_fn(ckpt: str, adapter: str | None = None, **kw) -> answering.AnswerFn:
  import llava_jax.infer.api  # Deferred: the whole model stack.
  return model_answer_fn(llava_jax.infer.api.load(ckpt, adapter=adapter), **kw)


def _pad_images(pixels_MxHxWx3: np.ndarray, m: int) -> np.ndarray:
  missing = m - pixels_MxHxWx3.shape[0]
  if not missing:
    return pixels_MxHxWx3
  zeros = np.zeros((missing,) + pixels_MxHxWx3.shape[1:], pixels_MxHxWx3.dtype)
  return np.concatenate([pixels_MxHxWx3, zeros])
