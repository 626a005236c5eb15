"""Inference: load a model (`api.load`, also `llava_jax.load`), build prompts from chat messages
(`prompting`), decode (`generate`, `sampling`), stream text (`text_stream`), batch requests
continuously (`scheduler`), and the chat object the programs use (`chat_api`)."""
