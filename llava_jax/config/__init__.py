"""The config schema: model presets and data / mesh defaults (`schema`), the training config's
skeleton (`training.stage_config`), and the one start-up check (`check`).

The recipes that pick values for a run live outside the package, in the checkout's `configs/`
(`pretrain.py`, `finetune.py`, `finetune_lora.py`); programs load them by path.
"""
