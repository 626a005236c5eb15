"""LLaVA's web demo in Gradio, on the server's worker (requests share the decode batch).

Upload or paste an image, ask, and watch the answer stream; multi-turn with Regenerate and
Clear; temperature, top-p and max-token controls; example images from data/demo. Gradio is
LLaVA's own choice and the ML demo convention, and it mounts on the same FastAPI app.
"""

import pathlib
import queue

import gradio as gr
import numpy as np

from llava_jax.infer import prompting
from llava_jax.infer import sampling
from llava_jax.serving import protocol

DEMO_IMAGES = pathlib.Path(__file__).resolve().parents[2] / "data" / "demo" / "images"
EXAMPLE_QUESTION = "What is in the bottom left corner of the image?"


def _messages(image, history: list[dict], question: str) -> list[prompting.Message]:
  """Gradio's chat history (OpenAI-style dicts) + the new question; the image in turn one."""
  messages, parts = [], [] if image is None else [np.asarray(image, np.uint8)]
  for turn in history:
    role = turn["role"]
    text = turn["content"] if isinstance(turn["content"], str) else ""
    messages.append(prompting.Message(role, (parts if role == "user" else []) + [text]))
    if role == "user":
      parts = []
  messages.append(prompting.Message("user", parts + [question]))
  return messages


def answer_stream(service, image, history, question, temperature, top_p, max_tokens):
  """Yields the growing answer text; the job goes through the server's worker."""
  ids, pixels = service.model.encode_messages(_messages(image, history, question))
  budget = max(1, min(int(max_tokens), service.model.context_len - len(ids)))
  params = sampling.SamplingParams(temperature=float(temperature), top_p=float(top_p))
  job = protocol.Job(ids, pixels, params, budget, [])
  events: queue.Queue = queue.Queue()
  service.admit()
  try:
    service.start_job(protocol.Parsed(job, True, False), events.put)
  except BaseException:
    service._finish_one()
    raise
  text = ""
  try:
    while True:
      event = events.get()
      if event[0] == "text":
        text += event[1]
        yield text
      elif event[0] == "error":
        raise gr.Error(event[1])
      else:
        yield text
        return
  finally:
    job.cancelled = True


def build(service) -> gr.Blocks:
  examples = sorted(DEMO_IMAGES.glob("*.jpg"))[:4]

  def respond(image, history, question, temperature, top_p, max_tokens):
    history = list(history or [])
    if not question.strip():
      yield history, ""
      return
    try:
      stream = answer_stream(service, image, history, question, temperature, top_p, max_tokens)
      # A new list: the generator above reads `history` lazily, before this turn.
      history = history + [{"role": "user", "content": question},
                           {"role": "assistant", "content": ""}]
      for text in stream:
        history[-1] = {"role": "assistant", "content": text}
        yield history, ""
    except (prompting.PromptError, protocol.RequestError) as e:
      raise gr.Error(str(e)) from None

  def regenerate(image, history, temperature, top_p, max_tokens):
    history = list(history or [])
    if len(history) < 2:
      yield history, ""
      return
    question = history[-2]["content"]
    yield from respond(image, history[:-2], question, temperature, top_p, max_tokens)

  with gr.Blocks(title="LLaVA (llava_jax)") as demo:
    gr.Markdown("## LLaVA on JAX\nUpload or paste an image, then ask about it.")
    with gr.Row():
      with gr.Column(scale=1):
        image = gr.Image(type="numpy", label="Image", sources=["upload", "clipboard"],
                         elem_id="image")
        gr.Examples([[str(p)] for p in examples], inputs=[image], label="Examples")
        temperature = gr.Slider(0.0, 1.0, 0.2, step=0.1, label="Temperature", elem_id="temperature")
        top_p = gr.Slider(0.05, 1.0, 0.7, step=0.05, label="Top P")
        max_tokens = gr.Slider(1, 1024, 128, step=1, label="Max output tokens")
      with gr.Column(scale=2):
        chatbot = gr.Chatbot(label="LLaVA", elem_id="chatbot", height=420)
        question = gr.Textbox(placeholder="Ask about the image and press Enter",
                              show_label=False, elem_id="question")
        with gr.Row():
          send = gr.Button("Send", variant="primary", elem_id="send")
          regen = gr.Button("Regenerate", elem_id="regenerate")
          clear = gr.Button("Clear", elem_id="clear")
    inputs = [image, chatbot, question, temperature, top_p, max_tokens]
    send.click(respond, inputs, [chatbot, question])
    question.submit(respond, inputs, [chatbot, question])
    regen.click(regenerate, [image, chatbot, temperature, top_p, max_tokens], [chatbot, question])
    clear.click(lambda: ([], "", None), None, [chatbot, question, image])
  return demo


def mount(app, chat_model):
  """The FastAPI app with the demo at `/` (the API routes stay first)."""
  del chat_model  # the app's service holds it
  return gr.mount_gradio_app(app, build(app.state.service), path="/")
