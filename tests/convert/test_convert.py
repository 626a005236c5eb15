"""from-hf / to-hf on tiny random llava-hf, CLIP and LLaMA checkpoints (no downloads)."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver
from absl.testing import parameterized
import ml_dtypes
import numpy as np
import safetensors.numpy
import tokenizers
import torch
import transformers

import llava_hf_fixtures as fx
import llava_jax
from llava_jax.checkpoint import model_dir
from llava_jax.checkpoint import workdirs
from llava_jax.config import check as config_check
from llava_jax.convert import __main__ as convert_main
from llava_jax.convert import exporter
from llava_jax.convert import hf
from llava_jax.convert import importer
from llava_jax.convert import tensor_files


def _run_cli(*args):
  """The CLI in a fresh process, as a user runs it; returns the CompletedProcess."""
  return subprocess.run([sys.executable, "-m", "llava_jax.convert", *args], cwd=fx.REPO,
                        capture_output=True, text=True, check=False,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _run_cli_in_process(command, **flag_values):
  """The CLI's main() with these flags, in this process (no interpreter start-up)."""
  if "hf" not in flags.FLAGS:      # the CLI defines its flags only when run as a program
    convert_main.define_flags()
  if not flags.FLAGS.is_parsed():   # under pytest nothing parsed them (absltest.main does)
    flags.FLAGS.mark_as_parsed()
  with flagsaver.as_parsed(**{k: str(v) for k, v in flag_values.items()}):
    convert_main.main(["convert", command])


def _canonical(tensors: dict) -> dict:
  return {hf.canonical_key(k): v for k, v in tensors.items() if hf.canonical_key(k) is not None}


def _siblings(path: pathlib.Path) -> list[str]:
  return sorted(p.name for p in path.parent.iterdir())


class TensorFilesTest(absltest.TestCase):
  """Our streaming safetensors reader/writer against the safetensors library's files."""

  def test_writer_output_reads_back_in_safetensors_and_ours(self):
    tmp = pathlib.Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    tensors = {"a.bf16": rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16),
               "b.f16": rng.standard_normal((7,)).astype(np.float16),
               "c.i64": np.arange(6, dtype=np.int64).reshape(2, 3),
               "d.f32": rng.standard_normal((4, 4)).astype(np.float32), "e.scalar": np.float32(2)}
    writer = tensor_files.ShardedSafetensorsWriter(tmp, max_shard_bytes=40)
    writer.add_all((k, np.asarray(v)) for k, v in tensors.items())
    files = writer.close()
    self.assertIn(tensor_files.SAFETENSORS_INDEX, files)
    self.assertEqual(sorted(p.name for p in tmp.iterdir()), sorted(files))
    from_library = fx.hf_tensors(tmp)
    ours = tensor_files.TensorReader.from_path(tmp)
    for key, value in tensors.items():
      for got in (from_library[key], ours.read(key)):
        self.assertEqual(got.dtype, np.asarray(value).dtype, key)
        np.testing.assert_array_equal(got, value, err_msg=key)
      self.assertEqual(ours.shape(key), np.shape(value))
    with self.assertRaisesRegex(ValueError, "'d.f32' written twice"):
      writer.add("d.f32", tensors["d.f32"])

  def test_reader_reads_library_files(self):
    tmp = pathlib.Path(tempfile.mkdtemp())
    tensors = {"x": np.arange(10, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(2, 5),
               "y": np.ones((3,), np.int32)}
    safetensors.numpy.save_file(tensors, tmp / "model.safetensors")
    reader = tensor_files.TensorReader.from_path(tmp)
    self.assertCountEqual(reader.keys(), ["x", "y"])
    for key, value in tensors.items():
      np.testing.assert_array_equal(reader.read(key), value)


class ConvertLlavaHfTest(parameterized.TestCase):
  """One tiny llava-hf model, saved three ways, imported and exported again."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    cls.hf_model = fx.llava_model()
    cls.sources = {
        "single": fx.save_llava_hf(cls.hf_model, cls.tmp / "hf_single"),
        "sharded": fx.save_llava_hf(cls.hf_model, cls.tmp / "hf_sharded", max_shard_size="100KB"),
    }
    old = fx.save_llava_hf(cls.hf_model, cls.tmp / "hf_old")
    fx.rename_to_old_layout(old)
    cls.sources["old_layout"] = old
    cls.original = fx.hf_tensors(cls.sources["single"])
    # The CLI path once (fresh process), the rest in-process.
    cls.cli_import = _run_cli("from-hf", f"--hf={cls.sources['single']}",
                              f"--out={cls.tmp / 'ours_single'}")
    for name in ("sharded", "old_layout"):
      importer.import_llava_hf(cls.sources[name], cls.tmp / f"ours_{name}")
    cls.cli_export = _run_cli("to-hf", f"--ckpt={cls.tmp / 'ours_single'}",
                              f"--out={cls.tmp / 'back_single'}", "--max_shard_size=60KB")

  def test_cli_succeeds(self):
    self.assertEqual(self.cli_import.returncode, 0, self.cli_import.stderr[-3000:])
    self.assertEqual(self.cli_export.returncode, 0, self.cli_export.stderr[-3000:])

  def test_sources_really_differ_in_layout(self):
    self.assertTrue((self.sources["sharded"] / tensor_files.SAFETENSORS_INDEX).exists())
    old_keys = fx.hf_tensors(self.sources["old_layout"])
    self.assertTrue(any(k.startswith("vision_tower.vision_model.") for k in old_keys))

  def test_model_dir_layout(self):
    out = self.tmp / "ours_single"
    self.assertTrue(model_dir.is_model_dir(out))
    self.assertEqual(json.loads((out / "config.json").read_text())["model"]["image_token_id"],
                     fx.IMAGE_TOKEN_ID)
    self.assertTrue((out / "tokenizer" / "tokenizer.json").is_file())
    self.assertEqual(model_dir.read_preprocessor(out)["crop_size"]["height"], fx.IMAGE_SIZE)
    params = model_dir.restore_params(out / "params")["params"]
    self.assertEqual(params["llm"]["layers"]["attn"]["k"]["kernel"].shape, (2, 48, 2, 12))

  @parameterized.named_parameters(("single", "single"), ("sharded", "sharded"),
                                  ("old_layout", "old_layout"))
  def test_round_trip_reproduces_every_tensor(self, source):
    back = self.tmp / f"back_{source}"
    if source != "single":   # 'single' went through the CLI in setUpClass.
      exporter.export_llava_hf(self.tmp / f"ours_{source}", back)
    exported = fx.hf_tensors(back)
    # Exported names are the ones save_pretrained writes: identical to the transformers-5 file.
    self.assertEqual(sorted(exported), sorted(self.original))
    for key, value in self.original.items():
      self.assertEqual(exported[key].dtype, value.dtype, key)
      np.testing.assert_array_equal(exported[key], value, err_msg=key)

  def test_export_is_sharded_and_loads_in_transformers(self):
    back = self.tmp / "back_single"
    index = json.loads((back / tensor_files.SAFETENSORS_INDEX).read_text())
    self.assertGreater(len(set(index["weight_map"].values())), 1)
    reloaded = transformers.LlavaForConditionalGeneration.from_pretrained(back).eval()
    ids = torch.tensor([[1, 7, fx.IMAGE_TOKEN_ID] + [9, 10, 11]])
    ids = torch.cat([ids[:, :2], torch.full((1, 16), fx.IMAGE_TOKEN_ID), ids[:, 3:]], 1)
    pixels = torch.randn(1, 3, fx.IMAGE_SIZE, fx.IMAGE_SIZE,
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
      want = self.hf_model(input_ids=ids, pixel_values=pixels).logits
      got = reloaded(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)

  def test_export_loads_with_auto_processor(self):
    back = self.tmp / "back_single"
    processor = transformers.AutoProcessor.from_pretrained(back)
    self.assertIsInstance(processor, transformers.LlavaProcessor)
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    inputs = processor(text="a photo <image> of a cat", images=[image], return_tensors="np")
    self.assertEqual(inputs["pixel_values"].shape, (1, 3, fx.IMAGE_SIZE, fx.IMAGE_SIZE))
    # <image> expands to (32 / 8)^2 = 16 patch tokens (CLS dropped by the 'default' strategy).
    self.assertEqual(int((inputs["input_ids"] == fx.IMAGE_TOKEN_ID).sum()), 16)

  def test_model_dir_is_sealed_with_checksums(self):
    out = self.tmp / "ours_single"
    sealed = json.loads((out / workdirs.CHECKSUMS).read_text())["files"]
    self.assertCountEqual(sealed, [str(p.relative_to(out)) for p in out.rglob("*")
                                   if p.is_file() and p.name != workdirs.CHECKSUMS])
    self.assertTrue(any(name.startswith("params/") for name in sealed))
    self.assertTrue(workdirs.verify_step(out))

  def test_a_flipped_byte_is_named_by_load_and_to_hf(self):
    damaged = self.tmp / "ours_flipped"
    shutil.copytree(self.tmp / "ours_single", damaged)
    biggest = max((p for p in (damaged / "params").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0x01
    biggest.write_bytes(bytes(data))
    named = re.escape(str(biggest.relative_to(damaged))) + ": checksum mismatch"
    with self.assertRaisesRegex(workdirs.CheckpointError, named):
      llava_jax.load(damaged)
    with self.assertRaisesRegex(workdirs.CheckpointError, named):
      exporter.export_llava_hf(damaged, self.tmp / "back_flipped")
    self.assertFalse((self.tmp / "back_flipped").exists())

  def test_a_bad_model_config_is_named_with_its_file_and_field(self):
    bad = self.tmp / "ours_bad_config"
    shutil.copytree(self.tmp / "ours_single", bad)
    config = json.loads((bad / "config.json").read_text())
    config["model"]["dtype"] = "float33"
    (bad / "config.json").write_text(json.dumps(config))
    (bad / workdirs.CHECKSUMS).unlink()   # edited by hand, as an older directory
    named = re.escape(f"{bad / 'config.json'}: config.model.dtype='float33': expected one of")
    with self.assertRaisesRegex(config_check.ConfigError, named):
      llava_jax.load(bad)
    with self.assertRaisesRegex(config_check.ConfigError, named):
      exporter.export_llava_hf(bad, self.tmp / "back_bad_config")

  def test_existing_destination_needs_overwrite(self):
    dest = self.tmp / "existing"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with self.assertRaisesRegex(FileExistsError, "--overwrite"):
      importer.import_llava_hf(self.sources["single"], dest)
    self.assertEqual((dest / "keep.txt").read_text(), "mine")
    importer.import_llava_hf(self.sources["single"], dest, overwrite=True)
    self.assertTrue(model_dir.is_model_dir(dest))
    self.assertFalse((dest / "keep.txt").exists())
    self.assertEqual([n for n in _siblings(dest) if n.startswith(".existing")], [])

  def test_dtype_cast(self):
    out = self.tmp / "ours_bf16"
    importer.import_llava_hf(self.sources["single"], out, dtype="bfloat16")
    params = model_dir.restore_params(out / "params")["params"]
    self.assertEqual(params["vision"]["pre_norm"]["scale"].dtype.name, "bfloat16")


class ConvertErrorsTest(parameterized.TestCase):
  """A broken checkpoint fails naming the tensor and shapes, and leaves nothing behind."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    cls.good = fx.save_llava_hf(fx.llava_model(seed=1), cls.tmp / "good")
    cls.tensors = fx.hf_tensors(cls.good)

  def _broken(self, name, edit):
    directory = self.tmp / name
    fx.save_llava_hf(fx.llava_model(seed=1), directory)
    tensors = dict(self.tensors)
    edit(tensors)
    safetensors.numpy.save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return directory

  @parameterized.named_parameters(
      ("missing", lambda t: t.pop("language_model.model.layers.1.mlp.up_proj.weight"),
       ["language_model.layers.1.mlp.up_proj.weight", r"\(96, 48\)"]),
      ("unexpected", lambda t: t.update({"language_model.model.layers.2.mlp.up_proj.weight":
                                         np.zeros((96, 48), np.float32)}),
       ["language_model.model.layers.2.mlp.up_proj.weight"]),
      ("shape", lambda t: t.update({"multi_modal_projector.linear_2.weight":
                                    np.zeros((48, 40), np.float32)}),
       ["multi_modal_projector.linear_2.weight", r"\(48, 40\)", r"\(48, 48\)"]),
  )
  def test_error_names_key_and_shapes(self, edit, patterns):
    source = self._broken(self._testMethodName, edit)
    dest = self.tmp / f"out_{self._testMethodName}"
    with self.assertRaises(ValueError) as caught:
      importer.import_llava_hf(source, dest)
    for pattern in patterns:
      self.assertRegex(str(caught.exception), pattern)
    self.assertFalse(dest.exists())
    self.assertEqual([n for n in _siblings(dest) if n.startswith(f".{dest.name}")], [])

  def test_cli_reports_error_and_writes_nothing(self):
    source = self._broken("cli", lambda t: t.pop("vision_tower.post_layernorm.bias"))
    dest = self.tmp / "out_cli"
    with self.assertRaisesRegex(ValueError, r"vision_tower.post_layernorm.bias \(32,\)"):
      _run_cli_in_process("from-hf", hf=source, out=dest)
    self.assertFalse(dest.exists())


def _word_tokenizer(directory: pathlib.Path, vocab_size: int):
  """A LLaMA-like tokenizer without <image> (as Vicuna's): <unk> <s> </s> + words."""
  vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
  vocab.update({f"w{i}": i for i in range(3, vocab_size)})
  model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>",
                                                   eos_token="</s>", unk_token="<unk>")
  tokenizer.save_pretrained(directory)


class ConvertComponentsTest(parameterized.TestCase):
  """--vision CLIP + --llm LLaMA (+ --projector mm_projector.bin), LLaVA's recipe."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    torch.manual_seed(2)
    cls.clip = transformers.CLIPVisionModel(fx.vision_config()).eval()
    cls.clip.save_pretrained(cls.tmp / "clip_vision")
    (cls.tmp / "clip_vision" / "preprocessor_config.json").write_text(
        json.dumps(fx.image_processor_settings()))
    clip_full = transformers.CLIPModel(transformers.CLIPConfig(
        vision_config=fx.vision_config().to_dict(),
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=64, bos_token_id=0, eos_token_id=1),
        projection_dim=16))
    clip_full.vision_model.load_state_dict(cls.clip.state_dict())
    clip_full.save_pretrained(cls.tmp / "clip_full")
    # A Vicuna-like LLM: 1000 text tokens, tokenizer without <image> or <pad>.
    cls.llama = transformers.LlamaForCausalLM(fx.text_config(vocab_size=1000, pad_token_id=None))
    cls.llama.save_pretrained(cls.tmp / "llama")
    _word_tokenizer(cls.tmp / "llama", 1000)
    cls.projector = {
        "model.mm_projector.0.weight": torch.randn(48, 32),
        "model.mm_projector.0.bias": torch.randn(48),
        "model.mm_projector.2.weight": torch.randn(48, 48),
        "model.mm_projector.2.bias": torch.randn(48),
    }
    torch.save(cls.projector, cls.tmp / "mm_projector.bin")
    _run_cli_in_process("from-hf", vision=cls.tmp / "clip_vision", llm=cls.tmp / "llama",
                        projector=cls.tmp / "mm_projector.bin", out=cls.tmp / "ours")
    exporter.export_llava_hf(cls.tmp / "ours", cls.tmp / "as_llava_hf")

  def test_every_tensor_lands_in_place(self):
    exported = _canonical(fx.hf_tensors(self.tmp / "as_llava_hf"))
    for key, value in self.clip.state_dict().items():
      name = hf.canonical_key("vision_tower." + key.removeprefix("vision_model."))
      if name is not None:
        np.testing.assert_array_equal(exported[name], value.numpy(), err_msg=key)
    for key, value in self.llama.state_dict().items():
      name = hf.canonical_key(key)
      got = exported[name]
      if key.endswith(("embed_tokens.weight", "lm_head.weight")):
        # <image> and <pad> are appended, then the vocabulary is padded to a multiple of 64.
        self.assertEqual(got.shape, (1024, 48))
        np.testing.assert_array_equal(got[:1000], value.numpy())
        np.testing.assert_allclose(got[1000:], np.broadcast_to(value.numpy().mean(0), (24, 48)),
                                   rtol=1e-6)
      else:
        np.testing.assert_array_equal(got, value.numpy(), err_msg=key)
    for i, k in ((1, 0), (2, 2)):
      for part in ("weight", "bias"):
        np.testing.assert_array_equal(
            exported[f"model.multi_modal_projector.linear_{i}.{part}"],
            self.projector[f"model.mm_projector.{k}.{part}"].numpy())

  def test_tokenizer_gains_image_token(self):
    tokenizer = transformers.AutoTokenizer.from_pretrained(self.tmp / "ours" / "tokenizer")
    cfg = model_dir.read_config(self.tmp / "ours")
    self.assertEqual(tokenizer.convert_tokens_to_ids("<image>"), 1000)
    self.assertEqual(cfg.image_token_id, 1000)
    self.assertEqual(tokenizer.pad_token, "<pad>")
    self.assertEqual(cfg.llm.vocab_size, 1024)
    self.assertEqual(cfg.projector, "mlp2x_gelu")
    self.assertEqual(cfg.vision.feature_layer, -2)

  def test_clip_model_without_projector_initialises_one(self):
    out = self.tmp / "ours_fresh"
    with self.assertLogs(level="WARNING") as logs:
      cfg = importer.import_components(self.tmp / "clip_full", self.tmp / "llama", out,
                                       projector_type="linear")
    self.assertIn("freshly initialised", "\n".join(logs.output))
    self.assertEqual(cfg.projector, "linear")
    params = model_dir.restore_params(out / "params")["params"]
    kernel = params["projector"]["linear_0"]["kernel"]
    self.assertEqual(kernel.shape, (32, 48))
    bound = 1 / np.sqrt(32)   # torch.nn.Linear's default init, as LLaVA starts stage 1
    self.assertLessEqual(np.abs(kernel).max(), bound)
    self.assertGreater(np.abs(kernel).max(), bound / 2)
    np.testing.assert_array_equal(params["vision"]["pre_norm"]["scale"],
                                  self.clip.pre_layrnorm.weight.detach().numpy())

  def test_linear_projector_has_no_llava_hf_form(self):
    ours = self.tmp / "ours_linear"
    importer.import_components(self.tmp / "clip_vision", self.tmp / "llama", ours,
                               projector_type="linear")
    dest = self.tmp / "linear_hf"
    with self.assertRaisesRegex(ValueError, "mlp2x_gelu"):
      exporter.export_llava_hf(ours, dest)
    self.assertFalse(dest.exists())

  def test_bad_projector_names_key_and_shapes(self):
    bad = dict(self.projector)
    bad["model.mm_projector.2.weight"] = torch.randn(48, 40)
    torch.save(bad, self.tmp / "bad_projector.bin")
    dest = self.tmp / "ours_bad"
    with self.assertRaisesRegex(ValueError, r"linear_2.weight.*\(48, 40\).*\(48, 48\)"):
      importer.import_components(self.tmp / "clip_vision", self.tmp / "llama", dest,
                                 projector=self.tmp / "bad_projector.bin")
    self.assertFalse(dest.exists())


if __name__ == "__main__":
  absltest.main()
