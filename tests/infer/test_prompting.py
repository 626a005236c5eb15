"""Inference prompts: the training builder with the model's stored settings, system messages
replacing the system prompt, and content parts in any order placed by the model's rule."""

import pathlib
import shutil
import tempfile

from absl.testing import absltest
import ml_collections
import numpy as np

import llava_jax
from llava_jax.config import schema
from llava_jax.data import conversation
from llava_jax.data import tokenize
from llava_jax.infer import prompting
import tiny

IMAGE = np.full((32, 48, 3), 90, np.uint8)


class PromptEncoderTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.cfg = schema.model_config("tiny")
    cls.tok = tokenize.load_tokenizer(f"{schema.DEMO_DIR}/tokenizer")

  def encoder(self, settings=None):
    return prompting.PromptEncoder(
        self.tok, image_token_id=self.cfg.image_token_id, num_image_tokens=4,
        image_size=self.cfg.vision.image_size, image_aspect="pad", context_len=512,
        settings=settings)

  def text(self, encoder, messages):
    return encoder.render(messages)[0].text

  def test_parts_in_any_order_give_llavas_layout(self):
    enc = self.encoder()
    before = enc.encode([prompting.Message("user", [IMAGE, "What is it?"])])[0]
    after = enc.encode([prompting.Message("user", ["What is it?", IMAGE])])[0]
    self.assertEqual(before, after)
    self.assertIn("USER: <image>\nWhat is it? ASSISTANT:",
                  self.text(enc, [prompting.Message("user", ["What is it?", IMAGE])]))
    as_written = self.encoder(prompting.PromptSettings("vicuna_v1", "as_written", "S"))
    self.assertEqual(self.text(as_written, [prompting.Message("user", ["What is it?", IMAGE])]),
                     "<s>S USER: What is it?\n<image> ASSISTANT:")

  def test_system_message_replaces_the_system_prompt(self):
    enc = self.encoder()
    plain = [prompting.Message("user", [IMAGE, "What is it?"])]
    french = [prompting.Message("system", ["Answer only in French."]), *plain]
    self.assertNotEqual(enc.encode(plain)[0], enc.encode(french)[0])
    self.assertTrue(self.text(enc, french).startswith("<s>Answer only in French. USER: <image>"))
    self.assertNotIn(conversation.VICUNA_V1_SYSTEM, self.text(enc, french))
    llama = self.encoder(prompting.PromptSettings("llama_2", "front", "Trained system."))
    self.assertIn("<<SYS>>\nTrained system.\n<</SYS>>", self.text(llama, plain))
    self.assertIn("<<SYS>>\nAnswer only in French.\n<</SYS>>", self.text(llama, french))

  def test_generation_prompt_is_the_training_prefix(self):
    # The same conversation as a training record and as chat messages: one prompt.
    enc = self.encoder()
    record = [("human", "What is it?\n<image>"), ("gpt", "A box.")]
    turns = conversation.training_turns(record, num_images=1, placement="front")
    train = enc.tokens.encode(enc.tokens.render("vicuna_v1", turns))
    prompt, _ = enc.encode([prompting.Message("user", ["What is it?", IMAGE])])
    self.assertEqual(train.input_ids[:len(prompt)].tolist(), prompt)
    self.assertNotEqual(train.labels[len(prompt)], tokenize.IGNORE)

  def test_bad_messages(self):
    enc = self.encoder()
    with self.assertRaisesRegex(prompting.PromptError, "unknown role 'tool'"):
      enc.encode([prompting.Message("tool", ["x"]), prompting.Message("user", ["q"])])
    with self.assertRaisesRegex(prompting.PromptError, "system message holds text only"):
      enc.encode([prompting.Message("system", [IMAGE]), prompting.Message("user", ["q"])])


class StoredSettingsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    cls.model_dir = tiny.write_model_dir(cls.tmp / "ours")

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp)
    super().tearDownClass()

  def test_load_uses_the_models_settings(self):
    stored = prompting.PromptSettings("llama_2", "front", "Be brief.")
    prompting.write_settings(self.model_dir, stored)
    m = llava_jax.load(self.model_dir)
    self.assertEqual(m.prompt_settings, stored)
    ids, _ = m.encode_messages([prompting.Message("user", ["Hi?"])])
    self.assertEqual(ids, m.tokenizer.encode(
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi? [/INST]", add_special_tokens=False))

  def test_workdir_settings_come_from_its_config(self):
    data = schema.data_config()
    data.update(template="llama_2", image_placement="random", system_prompt="Sys.")
    self.assertEqual(prompting.settings_from_data_config(data),
                     prompting.PromptSettings("llama_2", "random", "Sys."))
    # A workdir saved before these fields existed gets the schema's defaults.
    old = ml_collections.ConfigDict({"template": "vicuna_v1", "random_image_position": False})
    self.assertEqual(prompting.settings_from_data_config(old), prompting.default_settings())
    self.assertEqual(prompting.default_settings(), prompting.PromptSettings(
        "vicuna_v1", "front", conversation.VICUNA_V1_SYSTEM))

  def test_bad_settings_file_is_named(self):
    bad = self.tmp / "bad"
    bad.mkdir(exist_ok=True)
    (bad / prompting.SETTINGS_FILE).write_text('{"template": "chatml", "image_placement": '
                                               '"front", "system_prompt": ""}')
    with self.assertRaisesRegex(ValueError, r"bad/prompt.json: template 'chatml'"):
      prompting.read_settings(bad)
    self.assertIsNone(prompting.read_settings(self.tmp))


if __name__ == "__main__":
  absltest.main()
