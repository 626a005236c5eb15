"""The OpenAI-compatible server and the web demo: protocol (request fields → jobs, response
bodies), workers (the thread that owns the model: static or continuous batching), app (FastAPI
routes, limits, admission), http (uvicorn protocol with a header deadline), webui (Gradio)."""
