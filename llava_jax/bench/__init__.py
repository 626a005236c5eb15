"""Benchmarks, each a program (`python -m llava_jax.bench.NAME`): `train_step` (step time, MFU;
`torch_reference` is its CPU reference, `flops` its accounting), `generate` (prefill, decode),
`serve` (the HTTP server under load), `data_pipeline` (input samples/s), `lora` (full vs LoRA vs
QLoRA memory and time), `checksums` (checkpoint sealing and verification), `convert_memory` (peak RSS of the Hugging Face conversions) and `aot`
(the train or generate step compiled for a TPU slice with no TPU attached: XLA's memory and cost
analysis, the same numbers a benchmark reads, before any hardware is rented)."""
