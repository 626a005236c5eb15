"""OpenAI chat-completions request fields → a validated Job; Job events → response bodies.

Every request field is in `FIELDS`: honoured, or refused with a 400 that names it. A field that
is not listed is refused too, so nothing is silently ignored (README: "Request fields").
Images are decoded here (this runs in the app's bounded preprocessing pool, never on the event
loop): header geometry is checked against the pixel limit before any pixel is decoded.
"""

import base64
import binascii
import dataclasses
import io
import os
import time
import uuid

import numpy as np
from PIL import Image

from llava_jax.data import image as image_lib
from llava_jax.infer import prompting
from llava_jax.infer import sampling

# name -> how it is treated (the README table is written from this).
FIELDS = {
    "model": "must name the served model (404 otherwise)",
    "messages": "system, user and assistant turns; text and image_url parts in any order",
    "max_tokens": "upper bound on new tokens, cut to the context left after the prompt",
    "max_completion_tokens": "same as max_tokens (wins when both are given)",
    "temperature": "0 to 2; 0 is greedy",
    "top_p": "(0, 1]",
    "top_k": "0 (off) or more; an extension, as vLLM's",
    "seed": "0 to 2^32-1; a row's draws depend only on its seed",
    "stop": "a string or up to 4 strings; the text stops before the first",
    "stream": "server-sent events",
    "stream_options": "only include_usage: a last chunk with usage",
    "logprobs": "log-probabilities of the generated tokens (continuous scheduler)",
    "top_logprobs": "0 to 20 alternatives per token; needs logprobs",
    "n": "only 1",
    "frequency_penalty": "only 0",
    "presence_penalty": "only 0",
    "logit_bias": "only empty",
    "response_format": "only {'type': 'text'}",
    "user": "accepted as metadata; not used by generation",
}
REFUSED = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "audio",
           "modalities", "prediction", "reasoning_effort", "service_tier", "store", "metadata",
           "web_search_options")


class RequestError(Exception):
  """A client (4xx) or server (5xx) error with an OpenAI-style body; `code` is a string."""

  def __init__(self, status: int, message: str, param: str | None = None,
               code: str | None = None, retry_after: int | None = None):
    super().__init__(message)
    self.status, self.message, self.param, self.code = status, message, param, code
    self.retry_after = retry_after

  def body(self) -> dict:
    kind = ("invalid_request_error" if self.status < 500 and self.status != 429 else
            "rate_limit_error" if self.status == 429 else
            "server_busy" if self.status == 503 else "server_error")
    return {"error": {"message": self.message, "type": kind, "param": self.param,
                      "code": self.code}}


@dataclasses.dataclass
class Job:
  """One chat completion, ready to decode. Events go to `emit`:
  ("text", str, [token logprob dicts]) ... then ("done", finish_reason, completion_tokens)
  or ("error", message)."""
  prompt_ids: list[int]
  images: np.ndarray            # float32[M, H, W, 3]
  params: sampling.SamplingParams
  max_tokens: int
  stop: list[str]
  emit: object = None           # callable(event), set by whoever waits for the job
  logprobs: bool = False
  top_logprobs: int = 0
  cancelled: bool = False


@dataclasses.dataclass(frozen=True)
class Limits:
  max_image_bytes: int = 10 << 20
  max_image_pixels: int = 4096 * 4096
  max_images: int = 8
  image_root: str | None = None  # local image paths are refused unless this is set


_LOCAL_IMAGE_ERROR = ("image_url: not a readable image file under the server's image root "
                      "(--image_root)")


def _check_geometry(data: bytes, where: str, limits: Limits):
  """Width x height from the header only, before decoding a pixel (decompression bombs)."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      width, height = im.size
  except Exception:  # noqa: BLE001 - decode_image names the problem precisely just after.
    return
  if width * height > limits.max_image_pixels:
    raise RequestError(413, f"{where}: image is {width}x{height} = {width * height} pixels, over "
                       f"the server's limit of {limits.max_image_pixels}", "messages",
                       "image_too_large")


def _local_image(url: str, limits: Limits) -> np.ndarray:
  """A file under the image root; every failure gives one message (no probing of the host)."""
  if not limits.image_root:
    raise RequestError(400, "image_url: local file paths are disabled on this server; send a "
                       "base64 data URL", "messages", "local_images_disabled")
  root = os.path.realpath(limits.image_root)
  path = os.path.realpath(os.path.join(root, url.removeprefix("file://")))
  try:
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
      raise OSError
    if os.path.getsize(path) > limits.max_image_bytes:
      raise OSError
    with open(path, "rb") as f:
      data = f.read()
    _check_geometry(data, "image_url", limits)
    return image_lib.decode_image(data, name="image")
  except (OSError, ValueError, RequestError):
    raise RequestError(400, _LOCAL_IMAGE_ERROR, "messages", "invalid_image") from None


def _image(url: str, where: str, limits: Limits) -> np.ndarray:
  """uint8[H, W, 3] of an image_url part: a base64 data URL, or a local path under the root."""
  if url.startswith(("http://", "https://")):
    raise RequestError(400, f"{where}: remote image URLs are not fetched; send a base64 data "
                       "URL", "messages", "invalid_image_url")
  if not url.startswith("data:"):
    return _local_image(url, limits)
  header, sep, payload = url.partition(",")
  if not sep or ";base64" not in header:
    raise RequestError(400, f"{where}: data URLs must be base64 (data:image/...;base64,...)",
                       "messages", "invalid_image_url")
  if len(payload) * 3 // 4 > limits.max_image_bytes:
    raise RequestError(413, f"{where}: image larger than the {limits.max_image_bytes}-byte limit",
                       "messages", "image_too_large")
  try:
    data = base64.b64decode(payload, validate=True)
  except (binascii.Error, ValueError):
    raise RequestError(400, f"{where}: data URL is not valid base64", "messages",
                       "invalid_image_url") from None
  _check_geometry(data, where, limits)
  try:
    return image_lib.decode_image(data, name=where)
  except image_lib.ImageError as e:
    raise RequestError(400, str(e), "messages", "invalid_image") from None


def parse_messages(raw, limits: Limits) -> list[prompting.Message]:
  """OpenAI `messages` → prompting.Message list in the client's order, images decoded."""
  if not isinstance(raw, list) or not raw:
    raise RequestError(400, "'messages' must be a non-empty list", "messages", "invalid_value")
  messages, images = [], 0
  for i, m in enumerate(raw):
    if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
      raise RequestError(400, f"messages[{i}] needs role system|user|assistant", "messages",
                         "invalid_value")
    content = m.get("content")
    if isinstance(content, str):
      parts = [{"type": "text", "text": content}]
    elif isinstance(content, list):
      parts = content
    else:
      raise RequestError(400, f"messages[{i}].content must be a string or a list of parts",
                         "messages", "invalid_value")
    out_parts: list = []
    for j, p in enumerate(parts):
      where = f"messages[{i}].content[{j}]"
      kind = p.get("type") if isinstance(p, dict) else None
      if kind == "text" and isinstance(p.get("text"), str):
        out_parts.append(p["text"])
      elif kind == "image_url":
        spec = p.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str):
          raise RequestError(400, f"{where}.image_url.url must be a string", "messages",
                             "invalid_value")
        images += 1
        if images > limits.max_images:
          raise RequestError(400, f"{where}: more than {limits.max_images} images", "messages",
                             "too_many_images")
        out_parts.append(_image(url, where, limits))
      else:
        raise RequestError(400, f"{where}: unsupported part type {kind!r}", "messages",
                           "invalid_value")
    messages.append(prompting.Message(role=m["role"], parts=out_parts))
  return messages


def _number(body, name, default, lo, hi, kind=float):
  value = body.get(name)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      kind is int and not float(value).is_integer()):
    raise RequestError(400, f"'{name}' must be a {kind.__name__}", name, "invalid_type")
  if not lo <= value <= hi:
    raise RequestError(400, f"'{name}' must be in [{lo}, {hi}], got {value}", name,
                       "invalid_value")
  return kind(value)


def _refuse_unless(body, name, allowed, what):
  if name in body and body[name] not in allowed:
    raise RequestError(400, f"'{name}': {what} is supported by this server", name,
                       "unsupported_parameter")


@dataclasses.dataclass
class Parsed:
  job: Job
  stream: bool
  include_usage: bool


def parse_request(body, chat_model, model_name: str, limits: Limits, *,
                  default_max_tokens: int = 256, logprobs_supported: bool = True) -> Parsed:
  """Validates a request body and encodes its prompt (runs in a preprocessing worker)."""
  if not isinstance(body, dict):
    raise RequestError(400, "request body must be a JSON object", None, "invalid_value")
  for name in body:
    if name in REFUSED:
      raise RequestError(400, f"'{name}' is not supported by this server", name,
                         "unsupported_parameter")
    if name not in FIELDS:
      raise RequestError(400, f"unknown request field '{name}'", name, "unknown_parameter")
  model = body.get("model", model_name)
  if model != model_name:
    raise RequestError(404, f"unknown model {model!r}; this server has {model_name!r}", "model",
                       "model_not_found")
  _refuse_unless(body, "n", (1, None), "only n=1")
  _refuse_unless(body, "frequency_penalty", (0, 0.0, None), "only frequency_penalty=0")
  _refuse_unless(body, "presence_penalty", (0, 0.0, None), "only presence_penalty=0")
  _refuse_unless(body, "logit_bias", ({}, None), "only an empty logit_bias")
  _refuse_unless(body, "response_format", ({"type": "text"}, None),
                 "only response_format {'type': 'text'}")
  if "user" in body and not isinstance(body["user"], str):
    raise RequestError(400, "'user' must be a string", "user", "invalid_type")
  temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
  top_p = _number(body, "top_p", 1.0, 1e-6, 1.0)
  top_k = _number(body, "top_k", 0, 0, 1 << 20, int)
  seed = _number(body, "seed", 0, 0, 2**32 - 1, int)
  limit_body = {"max_tokens": body.get("max_completion_tokens", body.get("max_tokens"))}
  max_tokens = _number(limit_body, "max_tokens", default_max_tokens, 1, 1 << 30, int)
  stop = body.get("stop") or []
  stop = [stop] if isinstance(stop, str) else stop
  if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
    raise RequestError(400, "'stop' must be a string or a list of up to 4 strings", "stop",
                       "invalid_value")
  stream = body.get("stream") or False
  if not isinstance(stream, bool):
    raise RequestError(400, "'stream' must be a boolean", "stream", "invalid_type")
  options = body.get("stream_options") or {}
  if not isinstance(options, dict) or set(options) - {"include_usage"} or not isinstance(
      options.get("include_usage", False), bool):
    raise RequestError(400, "'stream_options' supports only {'include_usage': bool}",
                       "stream_options", "unsupported_parameter")
  if options and not stream:
    raise RequestError(400, "'stream_options' needs stream=true", "stream_options",
                       "invalid_value")
  logprobs = body.get("logprobs") or False
  if not isinstance(logprobs, bool):
    raise RequestError(400, "'logprobs' must be a boolean", "logprobs", "invalid_type")
  top_logprobs = _number(body, "top_logprobs", 0, 0, 20, int)
  if top_logprobs and not logprobs:
    raise RequestError(400, "'top_logprobs' needs logprobs=true", "top_logprobs",
                       "invalid_value")
  if logprobs and not logprobs_supported:
    raise RequestError(400, "'logprobs' needs the continuous scheduler (--scheduler=continuous)",
                       "logprobs", "unsupported_parameter")
  messages = parse_messages(body.get("messages"), limits)
  try:
    ids, images = chat_model.encode_messages(messages)
  except prompting.PromptError as e:
    code = "context_length_exceeded" if "context" in str(e) else "invalid_value"
    raise RequestError(400, str(e), "messages", code) from None
  max_tokens = min(max_tokens, chat_model.context_len - len(ids))
  params = sampling.SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
  job = Job(ids, images, params, max_tokens, stop, logprobs=logprobs, top_logprobs=top_logprobs)
  return Parsed(job, stream, bool(options.get("include_usage")))


class Responses:
  """Response bodies for one served model."""

  def __init__(self, model_name: str, fingerprint: str):
    self.model_name = model_name
    self.fingerprint = fingerprint

  def models(self) -> dict:
    return {"object": "list", "data": [
        {"id": self.model_name, "object": "model", "created": 0, "owned_by": "llava_jax"}]}

  def _base(self, kind: str) -> dict:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": self.model_name, "system_fingerprint": self.fingerprint}

  @staticmethod
  def usage(job: Job, count: int) -> dict:
    return {"prompt_tokens": len(job.prompt_ids), "completion_tokens": count,
            "total_tokens": len(job.prompt_ids) + count}

  def completion(self, job: Job, text: str, reason: str, count: int, logprobs: list) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": text},
              "finish_reason": reason,
              "logprobs": {"content": logprobs} if job.logprobs else None}
    return dict(self._base("chat.completion"), choices=[choice], usage=self.usage(job, count))

  def chunk_maker(self, job: Job, include_usage: bool):
    base = self._base("chat.completion.chunk")
    extra = {"usage": None} if include_usage else {}

    def chunk(delta, reason=None, logprobs=None):
      choice = {"index": 0, "delta": delta, "finish_reason": reason,
                "logprobs": {"content": logprobs} if job.logprobs and logprobs else None}
      return dict(base, choices=[choice], **extra)

    def usage_chunk(count):
      return dict(base, choices=[], usage=self.usage(job, count))
    return chunk, usage_chunk


def token_logprobs(tokenizer, before, ids, logprobs, top_ids, top_lps, top_n: int) -> list[dict]:
  """OpenAI `logprobs.content` entries for generated `ids` that follow the ids `before`.

  A token's text is what it adds to the decoded text of the few tokens before it (decoding it
  alone would drop the leading space of a metaspace/byte-level token)."""
  context = list(before[-4:])
  entries = []
  for t, lp, ti, tl in zip(ids, logprobs, top_ids, top_lps):
    prefix = tokenizer.decode(context, skip_special_tokens=True)

    def entry(token_id, value, context=context, prefix=prefix):
      text = tokenizer.decode(context + [token_id], skip_special_tokens=True)
      text = text[len(prefix):] if text.startswith(prefix) else tokenizer.decode([token_id])
      return {"token": text, "logprob": float(value), "bytes": list(text.encode("utf-8"))}
    entries.append(dict(entry(t, lp),
                        top_logprobs=[entry(i, l) for i, l in zip(ti[:top_n], tl[:top_n])]))
    context = (context + [t])[-4:]
  return entries
