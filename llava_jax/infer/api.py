"""The Python entry point: `llava_jax.load(path)` -> a model object for notebooks and tools.

```python
import llava_jax
m = llava_jax.load(path)              # model dir, training workdir or llava-hf directory
pixels = m.preprocess(images)         # PIL images / uint8 arrays -> float32[N, H, W, 3]
logits = m.logits(input_ids, pixels)  # one <image> id per image -> float32[B, T', V]
```
`logits` follows transformers' llava convention: each `<image>` id in `input_ids` is expanded to
`num_image_tokens` placeholders (so T' = T + images * (num_image_tokens - 1)), and `pixels` holds
the batch's images in reading order (row by row, left to right).
"""

import dataclasses
import functools
import pathlib
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from llava_jax import model as model_lib
from llava_jax import sharding
from llava_jax.checkpoint import model_dir
from llava_jax.checkpoint import sources
from llava_jax.config import schema
from llava_jax.data import image as image_lib
from llava_jax.infer import chat_api
from llava_jax.infer import prompting
from llava_jax.model import llama
from llava_jax.model import lora as lora_lib


@dataclasses.dataclass
class LlavaModel(chat_api.ChatMixin):  # generate/chat: see chat_api.py
  """A loaded LLaVA: module + parameters + what it needs to read text and images.

  Fields are plain so that other tools (generation, chat, serving) can build on them.
  """
  module: model_lib.Llava          # or lora.LoraModel around it: adapters applied on the fly
  # The parameter tree without the {'params': ...} wrapper; the decoder's layers are split per
  # layer (llama.split_layer_params: the decode loop reads them in place, one copy in memory).
  params: Any
  model_cfg: ml_collections.ConfigDict
  tokenizer: Any                   # transformers tokenizer, or None if the checkpoint had none
  image_size: int
  image_aspect: str                # 'pad' (LLaVA-1.5 expand2square) or 'crop' (CLIP)
  # Template, image placement and system prompt the model was trained with (chat/serve use them).
  prompt_settings: prompting.PromptSettings = dataclasses.field(
      default_factory=prompting.default_settings)

  @property
  def image_token_id(self) -> int:
    return self.model_cfg.image_token_id

  @property
  def num_image_tokens(self) -> int:
    return schema.num_image_tokens(self.model_cfg)

  def preprocess(self, images: Sequence[Any]) -> np.ndarray:
    """PIL images or uint8[H, W, 3] arrays -> float32[N, S, S, 3], CLIP-normalized."""
    arrays = [image_lib.as_rgb_array(im, f"preprocess: image {i}") for i, im in enumerate(images)]
    return image_lib.preprocess_batch(arrays, self.image_size, self.image_aspect)

  def expand_inputs(self, input_ids, pixels, attention_mask=None):
    """LLaVA's one-id-per-image inputs -> the model's batch (expanded, right-padded).

    Args:
      input_ids: int[B, T], one `image_token_id` per image.
      pixels: float32[N, S, S, 3], the N images of the batch in reading order (or None).
      attention_mask: optional int[B, T], 0 at padding.

    Returns:
      dict(input_ids int32[B, T'], segment_ids, positions, pixels float32[B, M, S, S, 3]).
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
      raise ValueError(f"input_ids: expected int[B, T], got shape {list(ids.shape)}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
      raise ValueError(f"attention_mask: shape {list(mask.shape)} != input_ids {list(ids.shape)}")
    is_image = (ids == self.image_token_id) & (mask > 0)
    per_row = is_image.sum(1)
    num_images = 0 if pixels is None else len(pixels)
    if per_row.sum() != num_images:
      raise ValueError(f"input_ids hold {per_row.sum()} <image> ids (id {self.image_token_id}) "
                       f"but {num_images} images were given")
    n = self.num_image_tokens
    repeats = np.where(is_image, n, 1)
    length = int(repeats.sum(1).max())
    b = ids.shape[0]
    out_ids = np.zeros((b, length), np.int32)
    out_mask = np.zeros((b, length), np.int32)
    for row in range(b):
      row_ids = np.repeat(ids[row], repeats[row])
      out_ids[row, :len(row_ids)] = row_ids
      out_mask[row, :len(row_ids)] = np.repeat(mask[row] > 0, repeats[row])
    positions = np.maximum(np.cumsum(out_mask, axis=1) - 1, 0).astype(np.int32)
    m = max(1, int(per_row.max(initial=0)))
    size = self.image_size
    batch_pixels = np.zeros((b, m, size, size, 3), np.float32)
    if num_images:
      pixels = np.asarray(pixels, np.float32)
      starts = np.concatenate([[0], np.cumsum(per_row)])
      for row in range(b):
        batch_pixels[row, :per_row[row]] = pixels[starts[row]:starts[row + 1]]
    return dict(input_ids=out_ids, segment_ids=out_mask, positions=positions,
                pixels=batch_pixels)

  @functools.cached_property
  def _forward(self):
    def forward(params, input_ids, pixels, segment_ids, positions):
      return self.module.apply({"params": params}, input_ids, pixels, segment_ids=segment_ids,
                               positions=positions)
    return jax.jit(forward)

  def logits(self, input_ids, pixels=None, attention_mask=None) -> np.ndarray:
    """float32[B, T', V] for `input_ids` int[B, T] with one `<image>` id per image.

    Padding (`attention_mask` 0, and the right-padding added to rows with fewer images) gets
    segment id 0; positions count real tokens only, as transformers' generation does.
    """
    batch = self.expand_inputs(input_ids, pixels, attention_mask)
    out = self._forward(self.params, batch["input_ids"], batch["pixels"], batch["segment_ids"],
                        batch["positions"])
    return np.asarray(out, np.float32)


def _split_decoder_layers(params, target, num_layers: int):
  """Params on their devices with the decoder's layers split per layer.

  Host arrays are split before placement (the device never holds the stacked copy); arrays
  already on devices are split there, briefly holding both before the stacked ones are freed.
  """
  def per_layer(stacked_sharding):  # layer l of an [L, ...] array: drop the (unsharded) L axis
    if isinstance(stacked_sharding, jax.sharding.NamedSharding):
      return jax.sharding.NamedSharding(stacked_sharding.mesh,
                                        jax.sharding.PartitionSpec(*stacked_sharding.spec[1:]))
    return stacked_sharding

  shardings = jax.tree.map(lambda t: t.sharding, target)
  layer_shardings = jax.tree.map(per_layer, shardings["llm"]["layers"])
  shardings = dict(shardings, llm=dict(shardings["llm"], layers=(layer_shardings,) * num_layers))

  split = functools.partial(llama.split_decoder_params, num_layers=num_layers)
  if all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params)):
    return jax.jit(split, out_shardings=shardings)(params)
  return jax.device_put(split(params), shardings)


def _with_adapters_target(target, params, mesh):
  """`target` for a base whose QLoRA kernels are codes + scales: the codes sharded as the kernel
  was, the (small) scales replicated."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat_target = traverse_util.flatten_dict(target)
  out = {}
  for key, value in traverse_util.flatten_dict(params).items():
    if key in flat_target:
      out[key] = flat_target[key]
      continue
    kernel = flat_target[key[:-1] + ("kernel",)]
    spec = kernel.sharding if key[-1] == "kernel_qvalue" else (
        sharding.replicated(mesh) if mesh is not None else kernel.sharding)
    out[key] = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=spec)
  return traverse_util.unflatten_dict(out)


def load(path: str | pathlib.Path, *, adapter: str | pathlib.Path | None = None,
         merge: bool = True, dtype: str | None = None, mesh=None,
         image_aspect: str | None = None) -> LlavaModel:
  """Loads a model directory, a training workdir (latest step) or a llava-hf directory.

  Args:
    path: the checkpoint location (a LoRA training workdir loads merged into its base).
    adapter: LoRA adapters for `path`: a PEFT or LLaVA LoRA directory, or a LoRA training
      workdir (llava_jax/convert/adapters.py).
    merge: fold the adapters into the base weights on load (W + scale * a . b); False applies
      them on the fly in each matmul and keeps the base as trained on (a QLoRA run's kernels
      stay quantized).
    dtype: compute dtype override (e.g. 'bfloat16'); parameters keep the config's param_dtype.
    mesh: optional `jax.sharding.Mesh` (axes data/fsdp/tensor) to shard parameters over;
      default: the first device.
    image_aspect: 'pad' or 'crop' override; default from the checkpoint ('crop' for llava-hf).
  """
  path = pathlib.Path(path)
  model_cfg = sources.read_model_config(path)
  if dtype is not None:
    model_cfg = ml_collections.ConfigDict(model_cfg.to_dict())
    model_cfg.dtype = dtype
  devices = jax.devices()[:1] if mesh is None else mesh.devices.flat
  module = model_lib.build(model_cfg, model_lib.platform_of(devices))
  target = sharding.abstract_params(module, mesh)
  from llava_jax.convert import adapters  # pylint: disable=g-import-not-at-top
  if not merge and (adapter is not None or adapters.is_lora_workdir(path)):
    checkpoint, adapter_tree = adapters.unmerged_checkpoint(path, adapter, target=target)
    params = _split_decoder_layers(checkpoint.params,
                                   _with_adapters_target(target, checkpoint.params, mesh),
                                   model_cfg.llm.layers)
    placement = (jax.devices()[0] if mesh is None else sharding.replicated(mesh))
    params[lora_lib.LORA] = jax.device_put(adapter_tree, placement)
    module = lora_lib.LoraModel(module)
  else:
    if adapter is not None:
      checkpoint = adapters.merged_checkpoint(path, adapter, target=target)
    else:
      checkpoint = sources.read_checkpoint(path, target=target, dtype=model_cfg.param_dtype)
    params = _split_decoder_layers(checkpoint.params, target, model_cfg.llm.layers)
  tokenizer = None
  if checkpoint.tokenizer_dir is not None:
    import transformers  # pylint: disable=g-import-not-at-top  # slow import, only when needed
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint.tokenizer_dir)
  aspect = image_aspect or checkpoint.preprocessor.get(model_dir.IMAGE_ASPECT, "crop")
  if aspect not in image_lib.PREPROCESS_MODES:
    raise ValueError(f"{path}: image_aspect must be one of {image_lib.PREPROCESS_MODES}, "
                     f"got {aspect!r}")
  return LlavaModel(module=module, params=params, model_cfg=model_cfg,
                    tokenizer=tokenizer, image_size=model_cfg.vision.image_size,
                    image_aspect=aspect,
                    prompt_settings=checkpoint.prompt or prompting.default_settings())
