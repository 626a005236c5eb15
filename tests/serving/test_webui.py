"""The Gradio web demo in a real headless Chromium (Debian's `chromium`, driven by Playwright)."""

import pathlib
import re
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image
from playwright.sync_api import sync_playwright

import llava_hf_fixtures as fx
from llava_jax.serving import app as serving
from llava_jax.serving import webui
import tiny

CHROMIUM = "/usr/bin/chromium"
REPO = tiny.REPO
IMAGE = REPO / "data" / "demo" / "images" / "outdoor_000.jpg"


def _squash(text: str) -> str:
  """Letters and digits only: the tiny model's nonsense holds markdown and control characters
  that the page renders differently."""
  return re.sub(r"[^A-Za-z0-9]+", "", text)


class WebUITest(absltest.TestCase):

  def test_upload_ask_stream_regenerate_clear_in_chromium(self):
    _, model = fx.imported_llava(pathlib.Path(tempfile.mkdtemp()), seed=1)
    question = webui.EXAMPLE_QUESTION
    seen = []  # the images the page sent (Gradio hands the decoded upload to the worker)
    settings = serving.Settings(model_name="tiny")
    api = serving.make_app(model, settings)
    api.state.service.model = tiny.RecordingModel(model, seen)
    server = serving.Running(webui.mount(api, model), settings)
    try:
      with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(server.url + "/", timeout=60_000)
        page.locator("#image input[type=file]").set_input_files(str(IMAGE))
        page.locator("#image img").first.wait_for(timeout=60_000)
        temperature = page.locator("#temperature input[type=number]")
        temperature.fill("0")  # greedy, as a user would set it
        temperature.press("Enter")
        page.locator("#question textarea").fill(question)
        page.locator("#send").click()
        page.wait_for_function(  # the first streamed piece is on the page
            "q => document.querySelector('#chatbot').innerText.replace(/[^A-Za-z0-9]+/g, '')"
            ".length > q.length + 5", arg=_squash(question), timeout=120_000)
        # The answer the model gives for what the page sent: greedy, 128 tokens.
        image = seen[0][0].parts[0]
        np.testing.assert_array_equal(image.shape[:2], (Image.open(IMAGE).height,
                                                        Image.open(IMAGE).width))
        want = model.chat(image, question, max_new_tokens=128)
        # Its opening (the page renders markdown, and the tiny model's nonsense holds some).
        want = _squash(want)[:20]
        self.assertLen(want, 20)
        shows = ("w => document.querySelector('#chatbot').innerText.replace(/[^A-Za-z0-9]+/g, '')"
                 ".includes(w)")
        page.wait_for_function(shows, arg=want, timeout=120_000)  # the streamed answer
        self.assertIn(_squash(question), _squash(page.locator("#chatbot").inner_text()))
        docs = REPO / "docs"
        docs.mkdir(exist_ok=True)
        page.screenshot(path=str(docs / "webui.png"))
        page.locator("#regenerate").click()
        page.wait_for_timeout(3000)
        page.wait_for_function(shows, arg=want, timeout=120_000)
        # Regenerate replaced the last turn: the question is there once.
        self.assertEqual(_squash(page.locator("#chatbot").inner_text()).count(_squash(question)),
                         1)
        page.locator("#clear").click()
        page.wait_for_function("q => !document.querySelector('#chatbot').innerText"
                               ".replace(/[^A-Za-z0-9]+/g, '').includes(q)", arg=_squash(question),
                               timeout=30_000)
        browser.close()
    finally:
      server.stop()


if __name__ == "__main__":
  absltest.main()
