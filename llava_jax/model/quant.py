"""Frozen kernels stored quantized (QLoRA): int8, int4 or NF4 codes with blockwise scales.

Numerics are qwix's (`qwix.quantize` / `qwix.dequantize`, Google's JAX quantization library):
absmax scales per block of (up to) `block` values along the kernel's last input dim, one per every other
dim. The parameter tree keeps plain arrays: a Dense layer's `kernel` becomes `kernel_qvalue`
(int8 / int4 / uint4 codes, same shape) and `kernel_scale` ([..., in/block, ...] float32); the
Dense layer dequantizes inside the step, right before its matmul.
"""

import math

import jax
import jax.numpy as jnp
import qwix

# config.lora.quant -> qwix qtype; NF4 codes come back as uint4, int4 as int4.
QTYPES = {"int8": jnp.int8, "int4": jnp.int4, "nf4": "nf4"}
_QTYPE_OF_CODES = {jnp.dtype(jnp.int8): jnp.int8, jnp.dtype(jnp.int4): jnp.int4,
                   jnp.dtype(jnp.uint4): "nf4"}


def quantize(kernel: jax.Array, kind: str, tiled_axis: int, block: int):
  """(codes, scales) of `kernel`, one scale per `block` values along `tiled_axis`."""
  if kind not in QTYPES:
    raise ValueError(f"config.lora.quant: unknown {kind!r} (expected 'none' or one of "
                     f"{tuple(QTYPES)})")
  if block < 1:
    raise ValueError(f"config.lora.quant_block={block}: must be >= 1")
  # The largest block <= `block` that tiles the dim (352 = 11 x 32 takes 32 for 64).
  tile = math.gcd(kernel.shape[tiled_axis], block)
  others = tuple(i for i in range(kernel.ndim) if i != tiled_axis)
  q = qwix.quantize(kernel.astype(jnp.float32), QTYPES[kind], channelwise_axes=others,
                    tiled_axes={tiled_axis: tile})
  return q.qvalue, q.scale


def dequantize(qvalue: jax.Array, scale: jax.Array, dtype) -> jax.Array:
  """The kernel in `dtype` from its codes and blockwise scales."""
  qtype = _QTYPE_OF_CODES[jnp.dtype(qvalue.dtype)]
  return qwix.dequantize(qwix.QArray(qvalue, scale, None, qtype)).astype(dtype)
