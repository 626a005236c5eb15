"""The Colab notebook runs top to bottom on CPU in demo mode (nbclient), so it cannot rot.

Its parameter cell is followed by an injected cell with fewer steps and a temporary workdir; the
kernel starts in the repository root, as the notebook's install cell leaves a Colab runtime.
"""

import json
import pathlib
import shutil
import tempfile

from absl.testing import absltest
import nbclient
import nbformat

import tiny

REPO = tiny.REPO
NOTEBOOK = REPO / "colab" / "llava_jax_demo.ipynb"
STEPS = 3


def _outputs(cell, kind: str) -> list:
  """Text of every stream output, or every 'image/png' payload, of a code cell."""
  if kind == "text":
    return [o["text"] for o in cell.outputs if o["output_type"] == "stream"]
  return [o["data"]["image/png"] for o in cell.outputs
          if o["output_type"] in ("display_data", "update_display_data", "execute_result")
          and "image/png" in o.get("data", {})]


def _cell_containing(nb, snippet: str):
  cells = [c for c in nb.cells if c.cell_type == "code" and snippet in c.source]
  assert len(cells) == 1, f"{len(cells)} code cells contain {snippet!r}"
  return cells[0]


class ColabNotebookTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = pathlib.Path(tempfile.mkdtemp())
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    nb.cells.insert(params[0] + 1, nbformat.v4.new_code_cell(
        f"STEPS = {STEPS}\nWORKDIR = {str(cls.workdir)!r}"))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute()   # raises CellExecutionError naming the failing cell
    cls.nb = nb

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.workdir, ignore_errors=True)
    super().tearDownClass()

  def test_parameter_cell_defaults_to_demo_mode(self):
    source = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in source.cells if "parameters" in c.metadata.get("tags", []))
    for name in ("DEMO_MODE = True", "HF_CHECKPOINT = ", "STEPS = "):
      self.assertIn(name, cell.source)

  def test_shows_devices_and_mesh(self):
    text = "".join(_outputs(_cell_containing(self.nb, "sharding.make_mesh"), "text"))
    self.assertIn("CpuDevice", text)
    self.assertRegex(text, r"mesh: \{'data': \d+, 'fsdp': 1, 'tensor': 1\}")

  def test_shows_the_image_and_chats_before_and_after_fine_tuning(self):
    for snippet in ("QUESTION = ", "model = llava_jax.load(FINETUNED"):
      cell = _cell_containing(self.nb, snippet)
      self.assertLen(_outputs(cell, "png"), 1)
      self.assertRegex("".join(_outputs(cell, "text")), r"ASSISTANT: \S")

  def test_fine_tunes_with_a_live_loss_plot(self):
    cell = _cell_containing(self.nb, "loop.run(config, FINETUNED)")
    self.assertNotEmpty(_outputs(cell, "png"))
    self.assertIn(f"over {STEPS} steps", "".join(_outputs(cell, "text")))
    metrics = (self.workdir / "finetune" / "metrics.jsonl").read_text().splitlines()
    self.assertEqual([json.loads(m)["step"] for m in metrics], list(range(1, STEPS + 1)))
    # Stage 2 started from the stage-1 model, not from random weights.
    config = json.loads((self.workdir / "finetune" / "config.json").read_text())
    self.assertEqual(config["init"]["params_from"], str(self.workdir / "stage1"))

  def test_exports_to_hugging_face_format(self):
    exported = self.workdir / "hf"
    config = json.loads((exported / "config.json").read_text())
    self.assertEqual(config["model_type"], "llava")
    self.assertNotEmpty(list(exported.glob("*.safetensors")))
    self.assertTrue((exported / "tokenizer.json").is_file())


if __name__ == "__main__":
  absltest.main()
