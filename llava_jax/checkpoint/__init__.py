"""Our checkpoint formats: a training workdir's verified Orbax steps (`workdirs`), a model
directory (`model_dir`), and the one reader of any place a trained model lives (`sources`: model
directory, workdir, or a llava-hf directory through `convert`). Hugging Face and PEFT interchange
is `llava_jax.convert`."""
