"""The Gradio web demo in a real headless Chromium (Debian's `chromium`, driven by Playwright)."""

import pathlib
import re
import tempfile

from absl.testing import absltest
from playwright.sync_api import sync_playwright

import llava_hf_fixtures as fx
from llava_jax.serving import app as serving
from llava_jax.serving import webui

CHROMIUM = "/usr/bin/chromium"
REPO = pathlib.Path(__file__).resolve().parent.parent
IMAGE = REPO / "data" / "demo" / "images" / "outdoor_000.jpg"


def _squash(text: str) -> str:
  return re.sub(r"\s+", "", text)


class WebUITest(absltest.TestCase):

  def test_upload_ask_stream_regenerate_clear_in_chromium(self):
    _, model = fx.imported_llava(pathlib.Path(tempfile.mkdtemp()), seed=1)
    question = webui.EXAMPLE_QUESTION
    # The page's defaults: temperature 0.2, top-p 0.7, 128 tokens, seed 0.
    want = model.chat(str(IMAGE), question, temperature=0.2, top_p=0.7, max_new_tokens=128)
    settings = serving.Settings(model_name="tiny")
    api = serving.make_app(model, settings)
    server = serving.Running(webui.mount(api, model), settings)
    try:
      with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(server.url + "/", timeout=60_000)
        page.locator("#image input[type=file]").set_input_files(str(IMAGE))
        page.locator("#image img").first.wait_for(timeout=60_000)
        page.locator("#question textarea").fill(question)
        page.locator("#send").click()
        shows = ("w => document.querySelector('#chatbot').innerText.replace(/\\s+/g, '')"
                 ".includes(w)")
        page.wait_for_function(shows, arg=_squash(want), timeout=120_000)  # the streamed answer
        self.assertIn(_squash(question), _squash(page.locator("#chatbot").inner_text()))
        docs = REPO / "docs"
        docs.mkdir(exist_ok=True)
        page.screenshot(path=str(docs / "webui.png"))
        page.locator("#regenerate").click()
        page.wait_for_timeout(3000)
        page.wait_for_function(shows, arg=_squash(want), timeout=120_000)
        # Regenerate replaced the last turn: the question is there once.
        self.assertEqual(_squash(page.locator("#chatbot").inner_text()).count(_squash(question)),
                         1)
        page.locator("#clear").click()
        page.wait_for_function("q => !document.querySelector('#chatbot').innerText"
                               ".replace(/\\s+/g, '').includes(q)", arg=_squash(question),
                               timeout=30_000)
        browser.close()
    finally:
      server.stop()


if __name__ == "__main__":
  absltest.main()
