"""LoRA: adapters in their own tree, frozen base, checkpoints without the base, exact resume."""

import pathlib
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

import llava_jax
from llava_jax import model as model_lib
from llava_jax.checkpoint import workdirs
from llava_jax.convert import exporter
from llava_jax.convert import peft as peft_lib
from llava_jax.infer import generate as generate_lib
from llava_jax.model import lora as lora_lib
from llava_jax.train import loop
from llava_jax.train import lora_state
from llava_jax.train import loss as loss_lib
from llava_jax.train import metrics as metrics_lib
from llava_jax.train import optimizer
from llava_jax.train import state as state_lib
from tests import train_fixtures
import tiny

VISION_TARGETS = r"vision/layers/(attn/(q|k|v|o)|mlp/(fc1|fc2))"


def _flat_names(tree) -> set[str]:
  return {"/".join(k) for k in traverse_util.flatten_dict(tree)}


def _tiny_lora_config(**train):
  config = train_fixtures.tiny_config("finetune_lora", **train)
  config.lora.rank = 4
  return config


class AdapterMathTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.config = _tiny_lora_config()
    self.model = model_lib.build(self.config.model)
    self.inputs = model_lib.init_inputs(self.model.cfg)
    self.params = model_lib.unbox(model_lib.init_params(self.model, jax.random.key(0)))
    self.layers = lora_lib.select(lora_lib.dense_layers(self.model, *self.inputs),
                                  self.config.lora.targets, 4)

  def _adapters(self, nonzero_b: bool):
    adapters = model_lib.unbox(lora_lib.init_adapters(jax.random.key(1), self.layers, 4, 8.0))
    if nonzero_b:
      flat = traverse_util.flatten_dict(adapters)
      flat = {k: (jax.random.normal(jax.random.key(len(k[-2])), v.shape) * 0.05
                  if k[-1] == "b" else v) for k, v in flat.items()}
      adapters = traverse_util.unflatten_dict(flat)
    return adapters

  def _logits(self, params, adapters=None):
    variables = {"params": params}
    if adapters is not None:
      variables[lora_lib.LORA] = adapters
    return self.model.apply(variables, *self.inputs)

  def test_selects_every_decoder_linear_layer(self):
    # The demo preset adds the LM head (its base is random).
    self.assertEqual([l.name for l in self.layers],
                     [f"llm/layers/{m}" for m in ("attn/k", "attn/o", "attn/q", "attn/v",
                                                  "mlp/down", "mlp/gate", "mlp/up")]
                     + ["llm/lm_head"])

  def test_fresh_adapters_change_nothing_and_merging_equals_applying(self):
    base = self._logits(self.params)
    np.testing.assert_array_equal(self._logits(self.params, self._adapters(False)), base)
    adapters = self._adapters(True)
    applied = self._logits(self.params, adapters)
    self.assertGreater(float(jnp.max(jnp.abs(applied - base))), 1e-3)  # the adapters act
    merged = self._logits(lora_lib.merge(self.params, adapters))
    np.testing.assert_allclose(merged, applied, atol=2e-5)

  def test_dropout_acts_on_the_adapter_input_in_training_only(self):
    adapters = self._adapters(True)
    params = {**self.params, lora_lib.LORA: adapters}
    model = lora_state.LoraModel(self.model, dropout=0.5)
    apply = lambda p, **kw: model.apply({"params": p}, *self.inputs, **kw)
    # No dropout rng (eval, generation): exactly the adapters without dropout.
    np.testing.assert_array_equal(apply(params), self._logits(self.params, adapters))
    train_1 = apply(params, rngs={"dropout": jax.random.key(1)})
    train_2 = apply(params, rngs={"dropout": jax.random.key(2)})
    self.assertGreater(float(jnp.max(jnp.abs(train_1 - apply(params)))), 1e-3)
    self.assertGreater(float(jnp.max(jnp.abs(train_1 - train_2))), 1e-3)
    # Zero b: the adapters add nothing however their input is dropped, so the base path is
    # untouched by dropout (PEFT: x . W + scale * (dropout(x) . a) . b).
    fresh = {**self.params, lora_lib.LORA: self._adapters(False)}
    np.testing.assert_array_equal(apply(fresh, rngs={"dropout": jax.random.key(1)}),
                                  self._logits(self.params))
    with self.assertRaisesRegex(ValueError, r"config.lora.dropout=1.0: must be in \[0, 1\)"):
      lora_state.LoraModel(self.model, dropout=1.0)

  def test_vision_tower_adapters_apply_and_merge(self):
    layers = lora_lib.select(lora_lib.dense_layers(self.model, *self.inputs),
                             (VISION_TARGETS,), 4)
    self.assertEqual(len(layers), 6)
    adapters = model_lib.unbox(lora_lib.init_adapters(jax.random.key(1), layers, 4, 8.0))
    flat = traverse_util.flatten_dict(adapters)
    adapters = traverse_util.unflatten_dict(
        {k: jax.random.normal(jax.random.key(i), v.shape) * 0.2 if k[-1] == "b" else v
         for i, (k, v) in enumerate(flat.items())})
    base = self._logits(self.params)
    applied = self._logits(self.params, adapters)
    # The tower runs only its first layers up to the feature layer: adapters act there too.
    self.assertGreater(float(jnp.max(jnp.abs(applied - base))), 1e-3)
    merged = self._logits(lora_lib.merge(self.params, adapters))
    np.testing.assert_allclose(merged, applied, atol=2e-5)

  def test_adapters_carry_logical_axes(self):
    boxed = lora_lib.init_adapters(jax.random.key(1), self.layers, 4, 8.0)
    q = boxed["llm"]["layers"]["attn"]["q"]
    self.assertEqual(q["a"].names, ("layers", "embed", "lora_rank"))
    self.assertEqual(q["b"].names, ("layers", "lora_rank", "heads", "head_dim"))
    self.assertEqual(boxed["llm"]["layers"]["attn"]["o"]["a"].names,
                     ("layers", "heads", "head_dim", "lora_rank"))

  def test_bad_targets_and_ranks_are_named(self):
    all_layers = lora_lib.dense_layers(self.model, *self.inputs)
    with self.assertRaisesRegex(ValueError, r"'llm/layers/attn/qq' matches no Dense layer"):
      lora_lib.select(all_layers, ("llm/layers/attn/qq",), 4)
    # k projects 64 -> 2 heads x 16 = 32 wide.
    with self.assertRaisesRegex(ValueError, r"rank=33 does not fit layer llm/layers/attn/k"):
      lora_lib.select(all_layers, ("llm/layers/attn/k",), 33)

  def test_adapter_for_another_base_is_refused(self):
    other = _tiny_lora_config()
    other.model.llm.dim = 96
    other_model = model_lib.build(other.model)
    other_layers = lora_lib.select(lora_lib.dense_layers(other_model, *model_lib.init_inputs(other_model.cfg)),
                                   other.lora.targets, 4)
    adapters = model_lib.unbox(lora_lib.init_adapters(jax.random.key(1), other_layers, 4, 8.0))
    with self.assertRaisesRegex(ValueError, r"adapter for llm/layers/attn/\w+.*another base"):
      lora_lib.merge(self.params, adapters)


class LoraTrainingTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    train_fixtures.use_compilation_cache()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    cls.config = _tiny_lora_config(steps=4)
    cls.config.checkpoint.every_steps = 2
    # Dropout on, and adapters on the vision tower too: resume, merge and export cover both.
    cls.config.lora.dropout = 0.1
    cls.config.lora.targets = cls.config.lora.targets + (VISION_TARGETS,)
    cls.workdir = cls.tmp / "run"
    cls.state = loop.run(cls.config, cls.workdir, train_fixtures.synthetic_data(cls.config))
    cls.final_params = jax.device_get(cls.state.params)

  def test_base_is_frozen_in_its_dtype_without_optimizer_state(self):
    trainable, frozen = optimizer.split_trainable(self.final_params, self.config.optim.trainable)
    self.assertEqual(set(trainable), {"projector", "lora"})
    # Optimizer moments exist for the trainable leaves only.
    n_trainable = len(jax.tree.leaves(trainable))
    mu = [s for s in jax.tree.leaves(self.state.opt_state) if getattr(s, "ndim", 0) > 0]
    self.assertEqual(len(mu), 2 * n_trainable)
    self.assertIn("llm/layers/attn/q/kernel", _flat_names(frozen))

  def test_checkpoint_holds_adapters_projector_and_optimizer_but_not_the_base(self):
    saved = workdirs.restore_params(self.workdir)
    names = _flat_names(saved)
    self.assertIn("lora/llm/layers/attn/q/a", names)
    self.assertIn("lora/vision/layers/mlp/fc1/b", names)
    self.assertIn("projector/linear_0/kernel", names)
    self.assertFalse([n for n in names if n.startswith(("llm/", "vision/"))])
    self.assertEqual(workdirs.read_config(self.workdir).init.params_from, "")

  def test_base_stays_as_initialised_and_adapters_moved(self):
    config = self.config
    _, frozen = optimizer.split_trainable(self.final_params, config.optim.trainable)
    frozen.pop("lora")   # the adapters' fixed scales
    init_rng, _ = jax.random.split(jax.random.key(config.seed))
    model = model_lib.build(config.model)
    # loop.run's random base: the same init rng (from the seed).
    fresh = model_lib.unbox(model_lib.init_params(model, init_rng))
    _, fresh_frozen = optimizer.split_trainable(fresh, config.optim.trainable)
    # Eager vs jitted init differ in the last ulp; one Adam step moves a weight by ~lr = 3e-3.
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-7),
                 frozen, fresh_frozen)
    b = self.final_params["lora"]["llm"]["layers"]["mlp"]["down"]["b"]
    self.assertGreater(float(np.abs(b).max()), 0.0)
    # The vision tower's first layer (it runs up to the feature layer) trains its adapters.
    b = self.final_params["lora"]["vision"]["layers"]["attn"]["q"]["b"]
    self.assertGreater(float(np.abs(b[0]).max()), 0.0)

  def test_dropout_rng_reaches_the_train_loss(self):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                             ("data", "fsdp", "tensor"))
    factory, _ = state_lib.make_factory(self.config, mesh, 4)
    batch = train_fixtures.batch_of(self.config)
    loss = lambda rng: float(loss_lib.model_loss(factory.model, self.final_params, batch,
                                                 rng)[0])
    self.assertNotEqual(loss(jax.random.key(1)), loss(jax.random.key(2)))
    self.assertEqual(loss(jax.random.key(1)), loss(jax.random.key(1)))

  def test_resume_is_exact(self):
    workdir = self.tmp / "resumed"
    shutil.copytree(self.workdir, workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")
    state = loop.run(self.config, workdir, train_fixtures.synthetic_data(self.config))
    self.assertEqual(int(state.step), 4)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), self.final_params)

  def test_workdir_loads_merged_and_exports_to_peft(self):
    model = llava_jax.load(self.workdir)
    batch = train_fixtures.batch_of(self.config)
    ids, pixels = batch["input_ids"][:2], batch["pixels"][:2]
    base, adapters = lora_state.split_adapters(self.final_params)
    on_the_fly = model_lib.build(self.config.model).apply(
        {"params": base, lora_lib.LORA: adapters}, ids, pixels)
    merged = model.module.apply({"params": model.params}, ids, pixels)
    np.testing.assert_allclose(merged, on_the_fly, atol=1e-4, rtol=0)
    out = self.tmp / "peft"
    exporter.export_peft(self.workdir, out)
    self.assertEqual(peft_lib.read_dropout(out), 0.1)   # the run's lora.dropout
    read, projector = peft_lib.read_adapter_dir(out, self.config.model)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), read, adapters)
    jax.tree.map(np.testing.assert_array_equal, projector, base["projector"])

  def test_adapters_on_the_fly_equal_merged(self):
    merged = llava_jax.load(self.workdir)
    on_the_fly = llava_jax.load(self.workdir, merge=False)
    self.assertIn(lora_lib.LORA, on_the_fly.params)
    self.assertNotIn(lora_lib.LORA, merged.params)
    batch = train_fixtures.batch_of(self.config)
    ids, pixels = batch["input_ids"][:2], batch["pixels"][:2]
    forward = lambda m: m.module.apply({"params": m.params}, ids, pixels)
    np.testing.assert_allclose(forward(on_the_fly), forward(merged), atol=1e-5, rtol=0)
    # Prefill and one decode step against the KV cache (the per-layer loop) agree too.
    lengths = jnp.full((2,), ids.shape[1], jnp.int32)
    outs = []
    for m in (merged, on_the_fly):
      gen = generate_lib.Generator(m.module, m.params, eos_ids=[2], pad_id=0,
                                   max_len=self.config.model.llm.max_len)
      logits, cache = gen.prefill(m.params, ids, pixels, lengths, ids.shape[1] + 2)
      step, _ = gen.decode_step(m.params, jnp.argmax(logits, -1).astype(jnp.int32), lengths,
                                cache)
      outs.append((logits, step))
    for want, got in zip(*outs):
      np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

  def test_merge_lora_flag_is_checked(self):
    def convert(*args):
      return subprocess.run([sys.executable, "-m", "llava_jax.convert", "to-hf", *args],
                            capture_output=True, text=True, cwd=tiny.REPO)
    without_flag = convert(f"--ckpt={self.workdir}", f"--out={self.tmp / 'hf1'}")
    self.assertNotEqual(without_flag.returncode, 0)
    self.assertIn("holds LoRA adapters; pass --merge_lora", without_flag.stderr)
    plain = self.tmp / "plain"
    tiny.write_model_dir(plain)
    no_adapters = convert("--merge_lora", f"--ckpt={plain}", f"--out={self.tmp / 'hf2'}")
    self.assertNotEqual(no_adapters.returncode, 0)
    self.assertIn("has no LoRA adapters", no_adapters.stderr)

  def test_projector_learning_rate_group(self):
    labels = optimizer.lr_group_labels(self.final_params, self.config.optim.lr_groups)
    self.assertEqual(labels["projector"]["linear_0"]["kernel"], "0")
    self.assertEqual(labels["lora"]["llm"]["layers"]["attn"]["q"]["a"], "default")

  def test_lm_head_adapter_with_chunked_loss_is_refused(self):
    config = _tiny_lora_config()   # the demo recipe adapts the LM head
    config.train.loss_chunk_len = 64
    with self.assertRaisesRegex(ValueError, "adapts llm/lm_head, but config.train.loss_chunk_len"):
      lora_state.LoraStateFactory(model_lib.build(config.model), config,
                                  optimizer.make_optimizer(config.optim, 4)[0],
                                  jax.sharding.Mesh(np.array(jax.devices()), ("data",)))

  def test_trainable_without_adapters_is_refused(self):
    config = _tiny_lora_config()
    config.optim.trainable = ("projector/.*",)
    with self.assertRaisesRegex(ValueError, "selects no adapter"):
      lora_state.LoraStateFactory(model_lib.build(config.model), config,
                                  optimizer.make_optimizer(config.optim, 4)[0],
                                  jax.sharding.Mesh(np.array(jax.devices()), ("data",)))



class QloraTest(absltest.TestCase):

  def _factory(self, kind):
    config = _tiny_lora_config()
    config.lora.quant = kind
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(-1, 1, 1), ("data", "fsdp", "tensor"))
    factory = lora_state.LoraStateFactory(model_lib.build(config.model), config,
                                          optimizer.make_optimizer(config.optim, 4)[0], mesh)
    return config, factory

  def test_quantized_base_matches_the_float_reference(self):
    config, factory = self._factory("int8")
    float_base = factory.random_params(jax.random.key(0))
    module = model_lib.build(config.model)
    ids, pixels = model_lib.init_inputs(module.cfg)
    want = module.apply({"params": float_base}, ids, pixels)
    errors = {}
    for kind, dtype in (("int8", jnp.int8), ("int4", jnp.int4), ("nf4", jnp.uint4)):
      _, factory = self._factory(kind)
      base = factory.quantized(float_base)
      q = base["llm"]["layers"]["mlp"]["up"]
      self.assertEqual(q["kernel_qvalue"].dtype, dtype)
      self.assertNotIn("kernel", q)
      self.assertIn("kernel", base["llm"]["embed"] | base["vision"]["layers"]["mlp"]["fc1"])
      got = module.apply({"params": base}, ids, pixels)
      errors[kind] = float(jnp.abs(got - want).max() / jnp.abs(want).max())
    self.assertLess(errors["int8"], 0.01)
    self.assertLess(errors["nf4"], 0.2)
    self.assertLess(errors["int8"], errors["nf4"])
    self.assertLess(errors["int8"], errors["int4"])

  def test_qlora_trains(self):
    config = _tiny_lora_config(steps=3)
    config.lora.quant = "nf4"
    workdir = pathlib.Path(tempfile.mkdtemp())
    state = loop.run(config, workdir, train_fixtures.synthetic_data(config))
    self.assertEqual(state.params["llm"]["layers"]["attn"]["q"]["kernel_qvalue"].dtype, jnp.uint4)
    losses = [m["loss"] for m in metrics_lib.read_metrics(workdir)]
    self.assertLess(losses[-1], losses[0])
    # Loaded for inference it merges into the base as trained (dequantized), not the float one.
    batch = train_fixtures.batch_of(config)
    ids, pixels = batch["input_ids"][:2], batch["pixels"][:2]
    base, adapters = lora_state.split_adapters(jax.device_get(state.params))
    on_the_fly = model_lib.build(config.model).apply(
        {"params": base, lora_lib.LORA: adapters}, ids, pixels)
    model = llava_jax.load(workdir)
    np.testing.assert_allclose(model.module.apply({"params": model.params}, ids, pixels),
                               on_the_fly, atol=1e-4, rtol=0)
    # Applied on the fly, the base stays quantized (NF4 codes) and computes the same logits.
    unmerged = llava_jax.load(workdir, merge=False)
    q = unmerged.params["llm"]["layers"][0]["attn"]["q"]
    self.assertEqual(q["kernel_qvalue"].dtype, jnp.uint4)
    self.assertNotIn("kernel", q)
    np.testing.assert_allclose(unmerged.module.apply({"params": unmerged.params}, ids, pixels),
                               on_the_fly, atol=1e-5, rtol=0)

  def test_unknown_quant_is_named(self):
    with self.assertRaisesRegex(ValueError, "config.lora.quant: unknown 'fp3'"):
      self._factory("fp3")


if __name__ == "__main__":
  absltest.main()
