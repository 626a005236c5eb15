"""`generate` and `chat` for the model object of `llava_jax.load` (mixed into api.LlavaModel).

```python
m = llava_jax.load(path)
ids = m.generate(input_ids, pixels, max_new_tokens=64, temperature=0.0)  # int32[B, N]
text = m.chat(image, "What is unusual about this image?")
for piece in m.chat(image, "And the colours?", history=[(q, text)], stream=True): ...
```
The mixin reads the loaded model's plain fields: `module`, `params`, `model_cfg`, `tokenizer`,
`image_size`, `image_aspect`, `prompt_settings` (prompts are built as the model was trained). Params sharded on a mesh (`load(path, mesh=...)`,
training's rules table) generate sharded, with batches placed as in training.
"""

from collections.abc import Iterator, Sequence
import functools
import os

import jax
import numpy as np

from llava_jax.data import image as image_lib
from llava_jax.infer import generate as generate_lib
from llava_jax.infer import prompting
from llava_jax.infer import sampling
from llava_jax.infer import text_stream


def _params_mesh(params):
  """The mesh the parameters are sharded on, or None for single-device params."""
  for leaf in jax.tree.leaves(params):
    mesh = getattr(getattr(leaf, "sharding", None), "mesh", None)
    if mesh is not None and mesh.size > 1:
      return mesh
  return None


class ChatMixin:
  """Generation and chat on top of a loaded model (see the module docstring)."""

  @property
  def context_len(self) -> int:
    return int(self.model_cfg.llm.max_len)

  @functools.cached_property
  def generator(self) -> generate_lib.Generator:
    if self.tokenizer is None or self.tokenizer.eos_token_id is None:
      raise ValueError("generation needs the checkpoint's tokenizer (for its EOS id)")
    pad = self.tokenizer.pad_token_id
    pad = self.tokenizer.eos_token_id if pad is None else pad
    return generate_lib.Generator(
        self.module, self.params, eos_ids=[self.tokenizer.eos_token_id], pad_id=pad,
        max_len=self.context_len, mesh=_params_mesh(self.params))

  @functools.cached_property
  def prompt_encoder(self) -> prompting.PromptEncoder:
    return prompting.PromptEncoder(
        self.tokenizer, image_token_id=self.model_cfg.image_token_id,
        num_image_tokens=self.num_image_tokens, image_size=self.image_size,
        image_aspect=self.image_aspect, context_len=self.context_len,
        settings=self.prompt_settings)

  def encode_messages(self, messages: Sequence[prompting.Message]):
    """(prompt ids, pixels float32[M, S, S, 3]) for chat messages (see prompting.py)."""
    return self.prompt_encoder.encode(messages)

  def generate(self, input_ids, pixels=None, *, max_new_tokens: int = 64,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               attention_mask=None) -> np.ndarray:
    """New token ids int32[B, max_new_tokens]; after a row's EOS (kept) comes the pad id.

    Two input conventions:
      * transformers': input_ids int[B, T] with one `<image>` id per image, pixels
        float32[N, S, S, 3] (the batch's images in reading order), optional attention_mask
        (0 = padding, left or right);
      * the model's batch: image ids already expanded, pixels float32[B, M, S, S, 3].
    Each row is generated from its real tokens only, however the input was padded.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
      raise ValueError(f"generate: input_ids must be int[B, T], got shape {list(ids.shape)}")
    if pixels is not None and np.ndim(pixels) == 5:
      mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
      prompts = [row[m > 0].tolist() for row, m in zip(ids, mask)]
      batch_pixels = np.asarray(pixels, np.float32)
    else:
      batch = self.expand_inputs(ids, pixels, attention_mask)
      prompts = [row[seg > 0].tolist() for row, seg in
                 zip(batch["input_ids"], batch["segment_ids"])]
      batch_pixels = batch["pixels"]
    # One seed per row (seed + row), so rows of one call do not draw the same numbers.
    params = [sampling.SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                      seed=seed + row) for row in range(len(prompts))]
    return self.generator.generate(prompts, batch_pixels, params=params,
                                   max_new_tokens=max_new_tokens, keep_eos=True)

  def chat(self, image, prompt: str, *, history: Sequence[tuple[str, str]] = (),
           stream: bool = False, max_new_tokens: int = 256, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (),
           system: str | None = None):
    """The answer to `prompt` about `image` (the model's template), or an iterator of pieces.

    image: None, a path, encoded bytes, a PIL image or uint8[H, W, 3]; it is shown in the
      first user turn. history: earlier (question, answer) pairs of this conversation.
    system: replaces the template's system prompt (default: the one the model was trained with).
    The answer is cut to fit the context; a prompt that alone fills it raises PromptError.
    """
    parts = [] if image is None else [_image_part(image)]
    messages = [] if system is None else [prompting.Message("system", [system])]
    for q, a in history:
      messages += [prompting.Message("user", parts + [q]), prompting.Message("assistant", [a])]
      parts = []
    messages.append(prompting.Message("user", parts + [prompt]))
    ids, pixels = self.encode_messages(messages)
    budget = min(max_new_tokens, self.context_len - len(ids))
    params = sampling.SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                     seed=seed)
    pieces = self._stream_text(ids, pixels, params, budget, stop)
    return pieces if stream else "".join(pieces)

  def _stream_text(self, ids, pixels, params, max_new_tokens, stop) -> Iterator[str]:
    chunks = self.generator.stream([ids], pixels[None], params=params,
                                   max_new_tokens=max_new_tokens)
    return text_stream.stream_pieces(self.tokenizer,
                                     ((new[0], done[0]) for new, done, _ in chunks), stop)


def _image_part(image):
  """bytes or uint8[H, W, 3] for a prompting.Message from a path, bytes, PIL or array."""
  if isinstance(image, (str, os.PathLike)):
    try:
      with open(image, "rb") as f:
        return f.read()
    except OSError as e:
      raise prompting.PromptError(f"cannot read image {image}: {e.strerror}") from None
  if isinstance(image, bytes):
    return image
  # Arrays are checked once, where prompting encodes them.
  return image_lib.to_rgb_array(image) if hasattr(image, "convert") else np.asarray(image)
