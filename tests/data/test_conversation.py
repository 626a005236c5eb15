"""Templates render LLaVA's prompt strings character for character, with the supervised spans."""

from absl.testing import absltest
from absl.testing import parameterized

from llava_jax.data import conversation as conv

TURNS = [("human", "<image>\nWhat is red?"), ("gpt", "The ball."),
         ("human", "How many?"), ("gpt", "Two balls.")]


class RenderTest(parameterized.TestCase):

  def test_vicuna_v1_is_llavas_prompt(self):
    got = conv.render("vicuna_v1", TURNS)
    # conv_vicuna_v1: system + " " + "USER: q" + " " + "ASSISTANT: a" + "</s>" per round.
    expected = (
        "<s>A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions. "
        "USER: <image>\nWhat is red? ASSISTANT: The ball.</s>"
        "USER: How many? ASSISTANT: Two balls.</s>")
    self.assertEqual(got.text, expected)
    self.assertEqual(got.supervised_text(), [" The ball.</s>", " Two balls.</s>"])
    self.assertEqual(got.round_ends, (expected.index("USER: How"), len(expected)))

  def test_llama_2_is_llavas_prompt(self):
    got = conv.render("llama_2", TURNS)
    # conv_llava_llama_2: "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{q} [/INST] {a} </s><s>[INST] ...".
    expected = (
        "<s>[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to "
        "understand the visual content that the user provides, and assist the user with a variety "
        "of tasks using natural language.\n<</SYS>>\n\n<image>\nWhat is red? [/INST] The ball. </s>"
        "<s>[INST] How many? [/INST] Two balls. </s>")
    self.assertEqual(got.text, expected)
    self.assertEqual(got.supervised_text(), [" The ball. </s>", " Two balls. </s>"])

  def test_plain_keeps_only_image_and_caption(self):
    got = conv.render("plain", [("human", "Describe it.\n<image>"), ("gpt", "A red ball.")])
    self.assertEqual(got.text, "<s><image>A red ball.\n")
    self.assertEqual(got.supervised_text(), ["A red ball.\n"])
    with self.assertRaisesRegex(conv.TemplateError, "plain template"):
      conv.render("plain", TURNS)

  def test_system_message_replaces_the_templates(self):
    vicuna = conv.render("vicuna_v1", TURNS[:1], generation=True, system="Answer in French.")
    self.assertEqual(vicuna.text, "<s>Answer in French. USER: <image>\nWhat is red? ASSISTANT:")
    llama = conv.render("llama_2", TURNS[:3], generation=True, system="Answer in French.")
    self.assertTrue(llama.text.startswith(
        "<s>[INST] <<SYS>>\nAnswer in French.\n<</SYS>>\n\n<image>\nWhat is red? [/INST]"))
    self.assertEqual(llama.text.count("<<SYS>>"), 1)
    # An empty system prompt drops llama_2's block, as LLaVA's wrap_sys does.
    self.assertTrue(conv.render("llama_2", TURNS, system="").text.startswith(
        "<s>[INST] <image>\nWhat is red?"))

  def test_tokenizer_specials(self):
    got = conv.render("vicuna_v1", TURNS[:2], bos="<|b|>", eos="<|e|>")
    self.assertTrue(got.text.startswith("<|b|>A chat") and got.text.endswith("ball.<|e|>"))

  @parameterized.parameters("vicuna_v1", "llama_2")
  def test_generation_prompt_ends_where_the_answer_starts(self, template):
    text = conv.render(template, TURNS[:3], generation=True).text
    self.assertTrue(text.endswith("How many? ASSISTANT:" if template == "vicuna_v1"
                                  else "<s>[INST] How many? [/INST]"), text)
    self.assertTrue(conv.render(template, TURNS).text.startswith(text))

  @parameterized.parameters(
      ([("gpt", "hi"), ("human", "x")], "alternate"),
      ([("human", "hi"), ("bot", "x")], "unknown role 'bot'"),
      ([], "no turns"),
      ([("human", "hi")], "generation prompt"),
      ([("human", "hi"), ("gpt", "see <image>")], "inside an answer"),
  )
  def test_bad_roles_raise(self, turns, message):
    with self.assertRaisesRegex(conv.TemplateError, message):
      conv.render("vicuna_v1", turns)

  def test_unknown_template(self):
    with self.assertRaisesRegex(conv.TemplateError, "unknown template"):
      conv.render("chatml", TURNS)


class PlacementTest(parameterized.TestCase):

  @parameterized.parameters(
      ("What is red?\n<image>", "<image>\nWhat is red?"),
      ("Look at <image> then say: what?", "<image>\nLook at  then say: what?"),
      ("  <image> \n\n What?  ", "<image>\nWhat?"),
      ("<image>", "<image>"),                       # LLaVA's final strip drops the "\n"
      ("<image><image>\nBoth?", "<image>\n<image>\nBoth?"),
  )
  def test_front_is_llavas_preprocess_multimodal(self, text, expected):
    turns = conv.place_images([("human", text), ("gpt", " a ")], "front")
    self.assertEqual(turns, [("human", expected), ("gpt", " a ")])

  def test_front_moves_every_human_turn_and_leaves_text_only_turns(self):
    turns = conv.place_images([("human", " hi "), ("gpt", "x"), ("human", "q <image>")], "front")
    self.assertEqual(turns, [("human", " hi "), ("gpt", "x"), ("human", "<image>\nq")])

  def test_as_written(self):
    self.assertEqual(conv.place_images(TURNS, "as_written"), TURNS)

  def test_random_is_seeded_per_record_and_uses_both_sides(self):
    turns = [("human", "What is red?\n<image>"), ("gpt", "x")]
    draw = lambda seed: [conv.place_images(turns, "random", conv.record_rng(seed, i))[0][1]
                         for i in range(20)]
    self.assertEqual(draw(3), draw(3))
    self.assertNotEqual(draw(3), draw(4))
    self.assertEqual(set(draw(3)), {"<image>\nWhat is red?", "What is red?\n<image>"})
    with self.assertRaisesRegex(ValueError, "needs an rng"):
      conv.place_images(turns, "random")
    with self.assertRaisesRegex(ValueError, "expected one of"):
      conv.place_images(turns, "back")

  def test_training_turns_drop_a_leading_gpt_turn_then_place(self):
    turns = conv.training_turns([("gpt", "Hi!"), ("human", "q\n<image>"), ("gpt", "a")],
                                num_images=1, placement="front")
    self.assertEqual(turns, [("human", "<image>\nq"), ("gpt", "a")])

  def test_add_missing_image_markers(self):
    turns, added = conv.add_missing_image_markers([("human", "What?"), ("gpt", "x")], 1)
    self.assertEqual((turns[0][1], added), ("<image>\nWhat?", 1))
    turns, added = conv.add_missing_image_markers(TURNS, 1)
    self.assertEqual((turns, added), (TURNS, 0))

  def test_answer_problems(self):
    turns = [("human", "q </s>"), ("gpt", "a</s>b"), ("human", "q"), ("gpt", "x ASSISTANT: y")]
    self.assertEqual(conv.answer_problems(turns, "vicuna_v1"),
                     [(1, "answer contains '</s>'"), (3, "answer contains ' ASSISTANT: '")])
    self.assertEqual(conv.answer_problems(turns[2:], "llama_2"), [])


if __name__ == "__main__":
  absltest.main()
