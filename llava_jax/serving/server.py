"""Serve a loaded model until SIGTERM / SIGINT: the OpenAI-compatible API and, with `ui`, the
Gradio web demo at `/` on the same worker (what `python -m llava_jax.serve` and `webui` run)."""

import signal
import sys

from llava_jax.serving import app as app_lib


def serve_forever(chat_model, settings: app_lib.Settings, *, host: str, port: int,
                  ui: bool = False) -> None:
  """Binds `host:port` (0: any free port), prints the URL, and serves until a stop signal;
  requests in flight finish first."""
  api = app_lib.make_app(chat_model, settings)
  if ui:
    from llava_jax.serving import webui  # deferred: gradio is a heavy import
    api = webui.mount(api, chat_model)
  sock = app_lib.bind(host, port)
  bound = sock.getsockname()[1]
  print(f"serving {settings.model_name!r} on http://{host}:{bound}/v1" + (
      f" (web demo: http://{host}:{bound}/)" if ui else ""), flush=True)
  # uvicorn finishes the requests in flight, then re-raises SIGTERM: exit 0 then, not -15.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
  try:
    app_lib.uvicorn_server(api, settings).run(sockets=[sock])
  finally:
    api.state.service.close()
