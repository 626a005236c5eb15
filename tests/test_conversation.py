"""Templates render LLaVA's prompt strings character for character, with the right roles."""

import random

from absl.testing import absltest
from absl.testing import parameterized

from llava_jax.data import conversation as conv

TURNS = [("human", "<image>\nWhat is red?"), ("gpt", "The ball."),
         ("human", "How many?"), ("gpt", "Two balls.")]


def supervised_text(rounds):
  return [s.text or s.kind for r in rounds for s in r if s.supervised]


class ConversationTest(parameterized.TestCase):

  def test_vicuna_v1_is_llavas_prompt(self):
    rounds = conv.render("vicuna_v1", TURNS)
    # conv_vicuna_v1: system + " " + "USER: q" + " " + "ASSISTANT: a" + "</s>" per round.
    expected = (
        "<s>A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions. "
        "USER: <image>\nWhat is red? ASSISTANT: The ball.</s>"
        "USER: How many? ASSISTANT: Two balls.</s>")
    self.assertEqual(conv.prompt_text(rounds), expected)
    self.assertLen(rounds, 2)
    self.assertEqual(supervised_text(rounds), [" The ball.", "eos", " Two balls.", "eos"])

  def test_llama_2_is_llavas_prompt(self):
    rounds = conv.render("llama_2", TURNS)
    # conv_llava_llama_2: "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{q} [/INST] {a} </s><s>[INST] ...".
    expected = (
        "<s>[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to "
        "understand the visual content that the user provides, and assist the user with a variety "
        "of tasks using natural language.\n<</SYS>>\n\n<image>\nWhat is red? [/INST] The ball. </s>"
        "<s>[INST] How many? [/INST] Two balls. </s>")
    self.assertEqual(conv.prompt_text(rounds), expected)
    self.assertEqual(supervised_text(rounds), [" The ball. ", "eos", " Two balls. ", "eos"])

  def test_plain_keeps_only_image_and_caption(self):
    rounds = conv.render("plain", [("human", "Describe it.\n<image>"), ("gpt", "A red ball.")])
    self.assertEqual(conv.prompt_text(rounds), "<s><image>A red ball.\n")
    self.assertEqual(supervised_text(rounds), ["A red ball.\n"])
    with self.assertRaisesRegex(conv.TemplateError, "plain template"):
      conv.render("plain", TURNS)

  def test_image_segments_are_split_out_and_unsupervised(self):
    rounds = conv.render("vicuna_v1", TURNS[:2])
    kinds = [s.kind for s in rounds[0]]
    self.assertEqual(kinds, ["bos", "text", "image", "text", "text", "eos"])
    self.assertTrue(rounds[0][1].text.endswith("USER: "))
    self.assertEqual(rounds[0][3].text, "\nWhat is red? ASSISTANT:")
    self.assertFalse(rounds[0][2].supervised)

  @parameterized.parameters("vicuna_v1", "llama_2")
  def test_generation_prompt_ends_where_the_answer_starts(self, template):
    text = conv.prompt_text(conv.render(template, TURNS[:3], generation=True))
    self.assertTrue(text.endswith("How many? ASSISTANT:" if template == "vicuna_v1"
                                  else "<s>[INST] How many? [/INST]"), text)

  @parameterized.parameters(
      ([("gpt", "hi"), ("human", "x")], "alternate"),
      ([("human", "hi"), ("bot", "x")], "unknown role 'bot'"),
      ([], "no turns"),
      ([("human", "hi")], "generation prompt"),
  )
  def test_bad_roles_raise(self, turns, message):
    with self.assertRaisesRegex(conv.TemplateError, message):
      conv.render("vicuna_v1", turns)

  def test_unknown_template(self):
    with self.assertRaisesRegex(conv.TemplateError, "unknown template"):
      conv.render("chatml", TURNS)

  def test_place_first_image(self):
    turns = [("human", "What is red?\n<image>"), ("gpt", "x")]
    self.assertEqual(conv.place_first_image(turns, "before")[0][1], "<image>\nWhat is red?")
    self.assertEqual(conv.place_first_image(turns, "after")[0][1], "What is red?\n<image>")
    # Text-only turns are left alone.
    self.assertEqual(conv.place_first_image([("human", "hi"), ("gpt", "x")], "before")[0][1], "hi")

  def test_random_image_position_is_seeded_and_uses_both_sides(self):
    def draw(seed):
      rng = random.Random(seed)
      return [conv.random_image_position(TURNS, rng)[0][1] for _ in range(20)]
    self.assertEqual(draw(3), draw(3))
    self.assertEqual(set(draw(3)), {"<image>\nWhat is red?", "What is red?\n<image>"})

  def test_add_missing_image_markers(self):
    turns, added = conv.add_missing_image_markers([("human", "What?"), ("gpt", "x")], 1)
    self.assertEqual((turns[0][1], added), ("<image>\nWhat?", 1))
    turns, added = conv.add_missing_image_markers(TURNS, 1)
    self.assertEqual((turns, added), (TURNS, 0))


if __name__ == "__main__":
  absltest.main()
