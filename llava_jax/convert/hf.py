"""The one name map between Hugging Face llava-hf tensors and our parameter tree, both ways.

In memory only (I/O lives in the CLI modules next to this one). API, stable:

  hf_to_params(read, hf_keys, model_cfg, allow_missing=()) -> params
      `read(key) -> np.ndarray` is called once per key, so tensors can stream from mmap-ed
      safetensors; per-layer tensors are written into preallocated stacked [L, ...] arrays
      (one copy of the model in host memory). Returns our canonical tree (without the
      {'params': ...} wrapper) of numpy arrays in the dtype read. Raises ValueError naming the
      key on: unknown key, shape mismatch (both shapes), a parameter set twice (both keys),
      missing keys. `allow_missing`: regexes over our parameter paths ('projector/.*') that
      may stay unset; those leaves are left out of the result.
  params_to_hf(params, model_cfg) -> Iterator[(hf_key, np.ndarray)]
      One tensor at a time, in the names `LlavaForConditionalGeneration` uses in memory
      (`model.vision_tower.*`, `model.multi_modal_projector.*`, `model.language_model.*`,
      `lm_head.weight`), which `from_pretrained` loads.
  canonical_key(hf_key) -> str | None
      Any accepted spelling -> the canonical name above (None for ignorable buffers).
  hf_names(model_cfg) -> dict[hf_key, (our path, layer index or None)]
      The full expected key table.

Accepted key layouts (KEY_ALIASES): llava-hf on disk as transformers 4.x-5.x save it
(`language_model.model.*`, `language_model.lm_head.weight`, `vision_tower.*`,
`vision_tower.vision_model.*`, `multi_modal_projector.*`), the in-memory names above, and the
plain checkpoints LLaVA is assembled from: CLIP (`vision_model.*`) and LLaMA (`model.layers.*`,
`model.embed_tokens.*`, `model.norm.*`, `lm_head.weight`). A CLIPModel's text tower
(`text_model.*`, projections, `logit_scale`) and rotary/position-id buffers are ignored.

Per-tensor transforms: torch Linear weights are (out, in) and ours are (in..., out...) with heads
split out; the patch conv is OIHW in torch and HWIO here; everything else is copied.
With tied embeddings `lm_head.weight` is accepted and ignored (HF re-ties it on load).
"""

import dataclasses
import math
import re
from typing import Callable, Iterable, Iterator

import jax
import ml_collections
import numpy as np

VISION = "model.vision_tower."
PROJECTOR = "model.multi_modal_projector."
LLM = "model.language_model."
LM_HEAD = "lm_head.weight"

# (pattern, replacement) applied in order; the first match wins.
KEY_ALIASES = (
    (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?", VISION),
    (r"^vision_model\.", VISION),                         # plain CLIP
    (r"^(?:model\.)?multi_modal_projector\.", PROJECTOR),
    (r"^model\.language_model\.", LLM),
    (r"^language_model\.model\.", LLM),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^model\.(?=(?:layers|embed_tokens|norm)\.)", LLM),  # plain LLaMA
)
# Buffers and CLIPModel parts LLaVA never uses.
IGNORED_KEYS = re.compile(
    r"(^|\.)(position_ids|rotary_emb\.inv_freq)$|^(text_model\.|text_projection\.|"
    r"visual_projection\.|logit_scale$)")


@dataclasses.dataclass(frozen=True)
class Transform:
  """How one tensor changes between torch's layout and ours.

  kind: 'copy' (same shape), 'flat' (torch flattens our trailing dims: biases [H, Dh]),
  'linear' (torch (out, in) vs ours (in..., out...), `n_in` leading input dims), 'conv'
  (torch OIHW vs ours HWIO).
  """
  kind: str
  n_in: int = 1

  def hf_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
    if self.kind == "copy":
      return ours
    if self.kind == "flat":
      return (math.prod(ours),)
    if self.kind == "linear":
      return (math.prod(ours[self.n_in:]), math.prod(ours[:self.n_in]))
    return (ours[3], ours[2], ours[0], ours[1])  # conv

  def to_ours(self, x: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    if self.kind in ("copy", "flat"):
      return x.reshape(ours)
    if self.kind == "linear":
      return x.T.reshape(ours)
    return x.transpose(2, 3, 1, 0)

  def to_hf(self, y: np.ndarray) -> np.ndarray:
    if self.kind == "copy":
      return y
    if self.kind == "flat":
      return y.reshape(-1)
    if self.kind == "linear":
      return y.reshape(math.prod(y.shape[:self.n_in]), -1).T
    return y.transpose(3, 2, 0, 1)


COPY, FLAT, LINEAR, LINEAR_2IN, CONV = (Transform("copy"), Transform("flat"), Transform("linear"),
                                        Transform("linear", 2), Transform("conv"))

# (HF name relative to its prefix, our path, transform); '{i}' marks per-layer tensors, which
# live stacked under a 'layers' subtree.
_VISION_RULES = (
    ("embeddings.patch_embedding.weight", "patch_embed", CONV),
    ("embeddings.class_embedding", "class_embed", COPY),
    ("embeddings.position_embedding.weight", "pos_embed", COPY),
    ("pre_layrnorm.weight", "pre_norm/scale", COPY),
    ("pre_layrnorm.bias", "pre_norm/bias", COPY),
    ("post_layernorm.weight", "post_norm/scale", COPY),
    ("post_layernorm.bias", "post_norm/bias", COPY),
    *[(f"encoder.layers.{{i}}.self_attn.{n}_proj.weight", f"layers/attn/{n}/kernel", LINEAR)
      for n in "qkv"],
    *[(f"encoder.layers.{{i}}.self_attn.{n}_proj.bias", f"layers/attn/{n}/bias", FLAT)
      for n in "qkv"],
    ("encoder.layers.{i}.self_attn.out_proj.weight", "layers/attn/o/kernel", LINEAR_2IN),
    ("encoder.layers.{i}.self_attn.out_proj.bias", "layers/attn/o/bias", COPY),
    *[(f"encoder.layers.{{i}}.layer_norm{n}.{w}", f"layers/norm{n}/{o}", COPY)
      for n in "12" for w, o in (("weight", "scale"), ("bias", "bias"))],
    *[(f"encoder.layers.{{i}}.mlp.{n}.weight", f"layers/mlp/{n}/kernel", LINEAR)
      for n in ("fc1", "fc2")],
    *[(f"encoder.layers.{{i}}.mlp.{n}.bias", f"layers/mlp/{n}/bias", COPY)
      for n in ("fc1", "fc2")],
)
_LLM_RULES = (
    ("embed_tokens.weight", "embed/embedding", COPY),
    ("norm.weight", "final_norm/scale", COPY),
    *[(f"layers.{{i}}.self_attn.{n}_proj.weight", f"layers/attn/{n}/kernel", LINEAR)
      for n in "qkv"],
    ("layers.{i}.self_attn.o_proj.weight", "layers/attn/o/kernel", LINEAR_2IN),
    *[(f"layers.{{i}}.mlp.{n}_proj.weight", f"layers/mlp/{n}/kernel", LINEAR)
      for n in ("gate", "up", "down")],
    ("layers.{i}.input_layernorm.weight", "layers/attn_norm/scale", COPY),
    ("layers.{i}.post_attention_layernorm.weight", "layers/mlp_norm/scale", COPY),
)


@dataclasses.dataclass(frozen=True)
class Entry:
  path: str                # our parameter path, '/'-joined
  layer: int | None        # index into the stacked layer axis, or None
  transform: Transform


def canonical_key(hf_key: str) -> str | None:
  """The in-memory llava-hf name for any accepted spelling; None if the key is ignorable."""
  if IGNORED_KEYS.search(hf_key):
    return None
  for pattern, replacement in KEY_ALIASES:
    new, n = re.subn(pattern, replacement, hf_key, count=1)
    if n:
      return new
  return hf_key


def hf_names(model_cfg: ml_collections.ConfigDict) -> dict[str, Entry]:
  """Every HF tensor name (canonical spelling) the model has, with where it goes in our tree."""
  table = {}

  def add(prefix, rules, our_prefix, num_layers):
    for hf, ours, transform in rules:
      if "{i}" in hf:
        for i in range(num_layers):
          table[prefix + hf.format(i=i)] = Entry(our_prefix + ours, i, transform)
      else:
        table[prefix + hf] = Entry(our_prefix + ours, None, transform)

  add(VISION, _VISION_RULES, "vision/", model_cfg.vision.layers)
  from llava_jax.model import projector as projector_lib  # pylint: disable=g-import-not-at-top
  for k in range(projector_lib.num_linear_layers(model_cfg.projector)):
    table[f"{PROJECTOR}linear_{k + 1}.weight"] = Entry(f"projector/linear_{k}/kernel", None, LINEAR)
    table[f"{PROJECTOR}linear_{k + 1}.bias"] = Entry(f"projector/linear_{k}/bias", None, COPY)
  add(LLM, _LLM_RULES, "llm/", model_cfg.llm.layers)
  if not model_cfg.llm.tie_embeddings:
    table[LM_HEAD] = Entry("llm/lm_head/kernel", None, LINEAR)
  return table


def param_shapes(model_cfg: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
  """Our parameter path -> shape, from `jax.eval_shape` (nothing is allocated)."""
  # Local: keeps `import hf` light for the CLI.
  from llava_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from llava_jax import sharding  # pylint: disable=g-import-not-at-top
  abstract = sharding.abstract_params(model_lib.build(model_cfg))
  flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
  return {"/".join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _set_leaf(tree: dict, path: str, value) -> None:
  *parents, leaf = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def hf_to_params(read: Callable[[str], np.ndarray], hf_keys: Iterable[str],
                 model_cfg: ml_collections.ConfigDict, allow_missing: Iterable[str] = ()) -> dict:
  """HF tensors -> our parameter tree (numpy). See the module docstring."""
  table = hf_names(model_cfg)
  shapes = param_shapes(model_cfg)
  leaves: dict[str, np.ndarray] = {}
  source: dict[tuple[str, int | None], str] = {}   # (path, layer) -> the HF key that set it
  for key in hf_keys:
    name = canonical_key(key)
    if name is None or (name == LM_HEAD and model_cfg.llm.tie_embeddings):
      continue
    entry = table.get(name)
    if entry is None:
      raise ValueError(f"unexpected tensor {key!r}: no parameter of this model "
                       f"(projector={model_cfg.projector!r}, vision layers="
                       f"{model_cfg.vision.layers}, llm layers={model_cfg.llm.layers})")
    slot = (entry.path, entry.layer)
    if slot in source:
      raise ValueError(f"parameter {entry.path}"
                       f"{'' if entry.layer is None else f'[{entry.layer}]'} set twice: by "
                       f"{source[slot]!r} and by {key!r}")
    full = shapes[entry.path]
    ours = full if entry.layer is None else full[1:]
    x = np.asarray(read(key))
    expected = entry.transform.hf_shape(ours)
    if tuple(x.shape) != expected:
      raise ValueError(f"tensor {key!r} has shape {tuple(x.shape)}, expected {expected} "
                       f"(for {entry.path} {full})")
    x = entry.transform.to_ours(x, ours)
    if entry.layer is None:
      leaves[entry.path] = np.ascontiguousarray(x)
    else:
      if entry.path not in leaves:
        leaves[entry.path] = np.empty(full, x.dtype)
      leaves[entry.path][entry.layer] = x
    source[slot] = key

  allowed = [re.compile(p) for p in allow_missing]
  missing = [name for name, e in table.items() if (e.path, e.layer) not in source
             and not any(p.fullmatch(e.path) for p in allowed)]
  if missing:
    shown = ", ".join(f"{n} {table[n].transform.hf_shape(_slice(shapes, table[n]))}"
                      for n in missing[:8])
    raise ValueError(f"{len(missing)} tensor(s) missing from the checkpoint: {shown}"
                     f"{' ...' if len(missing) > 8 else ''}")
  # A leaf partly covered (some layers only) is an error even when its path may be missing.
  for path in leaves:
    layers = {layer for (p, layer) in source if p == path and layer is not None}
    if layers and len(layers) != shapes[path][0]:
      raise ValueError(f"parameter {path}: only layers {sorted(layers)} of {shapes[path][0]} "
                       "were in the checkpoint")
  params: dict = {}
  for path in shapes:
    if path in leaves:
      _set_leaf(params, path, leaves[path])
  return params


def _slice(shapes, entry: Entry) -> tuple[int, ...]:
  full = shapes[entry.path]
  return full if entry.layer is None else full[1:]


def params_to_hf(params: dict, model_cfg: ml_collections.ConfigDict, only: str = ""
                 ) -> Iterator[tuple[str, np.ndarray]]:
  """Our tree (numpy or jax leaves, boxed or not) -> (HF name, tensor), one at a time.

  `only`: a top-level subtree ('projector') to convert alone; default everything."""
  from llava_jax import model as model_lib
  params = model_lib.unbox(params)
  if set(params) == {"params"}:
    params = params["params"]
  for name, entry in hf_names(model_cfg).items():
    if only and not entry.path.startswith(only + "/"):
      continue
    node = params
    for part in entry.path.split("/"):
      if part not in node:
        raise ValueError(f"params: no {entry.path!r} (needed for {name})")
      node = node[part]
    y = node if entry.layer is None else node[entry.layer]
    yield name, np.ascontiguousarray(entry.transform.to_hf(np.asarray(y)))
