"""`convert to-hf` exports a chat template with which transformers builds exactly our prompts.

On the exported directory, `LlavaProcessor.apply_chat_template(messages,
add_generation_prompt=True, tokenize=True)` must give the ids `prompting.PromptEncoder` gives for
the same messages (multi-turn, a system message, text before the image), for each template.
"""

import pathlib
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image
import transformers

from llava_jax.checkpoint import sources
from llava_jax.config import schema
from llava_jax.convert import exporter
from llava_jax.data import tokenize
from llava_jax.infer import prompting
import tiny

IMAGE = np.zeros((40, 56, 3), np.uint8)
IMAGE[5:20, 10:30] = (200, 30, 40)

# (name, [(role, [parts])]) with parts "text" or None for the image.
CONVERSATIONS = [
    ("image_first", [("user", [None, "What is red?"])]),
    ("text_before_image", [("user", ["What is red?", None])]),
    ("system_message", [("system", ["Answer only in French."]), ("user", [None, "What?"])]),
    ("multi_turn", [("user", [None, "What is red?"]), ("assistant", [" A box. "]),
                    ("user", ["And the background?"]), ("assistant", ["Black."]),
                    ("user", ["  Sure?\n"])]),
    ("multi_turn_system", [("system", ["Be brief."]), ("user", ["Look:", None, "what?"]),
                           ("assistant", ["A box."]), ("user", ["Why?"])]),
    ("text_only", [("user", ["Hello! 你好 🙂"])]),
]
SETTINGS = {
    "vicuna_v1": prompting.PromptSettings("vicuna_v1", "front",
                                          prompting.default_settings().system_prompt),
    "vicuna_v1_as_written": prompting.PromptSettings("vicuna_v1", "as_written", "Hi \"there\"."),
    "llama_2": prompting.PromptSettings("llama_2", "random", "You answer with 一 word 🙂."),
    "plain": prompting.PromptSettings("plain", "front", ""),
}
# plain (stage 1) takes one user turn with an image; the other conversations are not prompts.
PLAIN_CONVERSATIONS = ("image_first", "text_before_image", "system_message")


def hf_messages(conversation):
  pil = Image.fromarray(IMAGE)
  return [{"role": role, "content": [{"type": "image", "image": pil} if p is None else
                                     {"type": "text", "text": p} for p in parts]}
          for role, parts in conversation]


def our_messages(conversation):
  return [prompting.Message(role, [IMAGE if p is None else p for p in parts])
          for role, parts in conversation]


class ChatTemplateTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    cls.ours = tiny.write_model_dir(cls.tmp / "ours")
    cls.cfg = schema.model_config("tiny")
    cls.exported = {}
    for name, settings in SETTINGS.items():
      prompting.write_settings(cls.ours, settings)
      cls.exported[name] = cls.tmp / f"hf_{name}"
      exporter.export_llava_hf(cls.ours, cls.exported[name])

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp)
    super().tearDownClass()

  def encoder(self, settings):
    return prompting.PromptEncoder(
        tokenize.load_tokenizer(str(self.ours / "tokenizer")),
        image_token_id=self.cfg.image_token_id, num_image_tokens=schema.num_image_tokens(self.cfg),
        image_size=self.cfg.vision.image_size, image_aspect="crop", context_len=512,
        settings=settings)

  @parameterized.parameters(
      (s, c) for s in SETTINGS for c, _ in CONVERSATIONS
      if s != "plain" or c in PLAIN_CONVERSATIONS)
  def test_processor_gives_our_prompt_ids(self, settings, conversation):
    turns = dict(CONVERSATIONS)[conversation]
    processor = transformers.AutoProcessor.from_pretrained(self.exported[settings])
    got = processor.apply_chat_template(hf_messages(turns), add_generation_prompt=True,
                                        tokenize=True, return_dict=True)
    ids, _ = self.encoder(SETTINGS[settings]).encode(our_messages(turns))
    self.assertEqual(list(np.asarray(got["input_ids"]).reshape(-1)), ids)

  def test_tokenizer_template_renders_our_text(self):
    turns = dict(CONVERSATIONS)["multi_turn_system"]
    tok = transformers.AutoTokenizer.from_pretrained(self.exported["llama_2"])
    text = tok.apply_chat_template(hf_messages(turns), add_generation_prompt=True,
                                   tokenize=False)
    rendered, _ = self.encoder(SETTINGS["llama_2"]).render(our_messages(turns))
    self.assertEqual(text, rendered.text)
    self.assertIn("<<SYS>>\nBe brief.\n<</SYS>>\n\n<image>\nLook:\n\nwhat? [/INST]", text)

  def test_settings_travel_with_the_export(self):
    self.assertEqual(sources.read_checkpoint(self.exported["llama_2"]).prompt,
                     SETTINGS["llama_2"])


if __name__ == "__main__":
  absltest.main()
