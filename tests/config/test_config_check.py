"""The start-up config check names the field, the value and what is allowed."""

import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized

from configs import finetune
from llava_jax.config import check as config_check
import tiny

_ROOT = tiny.REPO
_FINETUNE = str(_ROOT / "configs" / "finetune.py")


class CheckTest(parameterized.TestCase):

  def test_the_shipped_presets_pass(self):
    for preset in finetune.RECIPES:
      config_check.check(finetune.get_config(preset))

  @parameterized.parameters(
      ("train.steps", -5, "expected an integer >= 0"),
      ("train.batch_size", 0, "expected an integer >= 1"),
      ("train.batch_size", -8, "expected an integer >= 1"),
      ("train.grad_accum_steps", 0, "expected an integer >= 1"),
      ("checkpoint.every_steps", 0, "expected an integer >= 1"),
      ("optim.lr", -1e-3, r"expected a number in \[0.0, inf\]"),
      ("model.dtype", "float33", "expected one of .*'bfloat16'"),
      ("model.param_dtype", "int8", "expected one of"),
      ("model.attention", "flash", "expected one of .*'splash'"),
      ("model.remat", "some", "expected one of .*'dots'"),
      ("model.projector", "mlp2x_relu", "expected 'linear' or 'mlpNx_gelu'"),
      ("model.vision.feature_select", "cls", "expected one of .*'cls_patch'"),
      ("data.on_error", "ignore", "expected one of .*'strict'"),
      ("data.template", "chatml", "expected one of .*'vicuna_v1'"),
      ("data.image_aspect", "stretch", "expected one of .*'crop'"),
      ("train.on_nonfinite", "ignore", "expected one of .*'stop'"),
      ("optim.mu_dtype", "float64", "expected one of"),
      ("mesh.fsdp", 0, "expected an integer >= 1 or -1"),
  )
  def test_bad_value_is_named_with_what_is_allowed(self, field, value, allowed):
    config = finetune.get_config("demo")
    section, _, name = field.rpartition(".")
    node = config
    for part in section.split("."):
      node = node[part]
    node[name] = value
    with self.assertRaisesRegex(config_check.ConfigError,
                                rf"config\.{field}={value!r}: {allowed}"):
      config_check.check(config)

  def test_every_problem_is_listed_at_once(self):
    config = finetune.get_config("demo")
    config.train.steps, config.optim.lr = -5, -1.0
    with self.assertRaises(config_check.ConfigError) as caught:
      config_check.check(config)
    self.assertLen(caught.exception.problems, 2)


class CommandLineTest(absltest.TestCase):

  def test_unknown_preset_lists_the_presets(self):
    problem = config_check.command_line_problem([f"--config={_FINETUNE}:foo"], _FINETUNE)
    self.assertRegex(problem, r"unknown preset 'foo'.*'demo', 'llava_v1_7b'")

  def test_unknown_field_is_named_with_the_fields_that_exist(self):
    problem = config_check.command_line_problem(["--config.train.nosuch=3"], _FINETUNE)
    self.assertRegex(problem, r"--config.train.nosuch: unknown config field \(config.train has "
                     r"no 'nosuch'; its fields: .*batch_size")
    problem = config_check.command_line_problem(["--config.modle.dtype=float32"], _FINETUNE)
    self.assertIn("config has no 'modle'", problem)

  def test_known_fields_and_presets_pass(self):
    self.assertIsNone(config_check.command_line_problem(
        [f"--config={_FINETUNE}:llava15_7b", "--config.train.steps=3"], _FINETUNE))

  def test_the_program_exits_naming_the_field(self):
    for args, expected in ((["--config.train.nosuch=3"], "config.train has no 'nosuch'"),
                           ([f"--config={_FINETUNE}:foo"], "unknown preset 'foo'"),
                           (["--config.model.dtype=float33", "--config.train.steps=-5"],
                            "config.model.dtype='float33': expected one of")):
      result = subprocess.run([sys.executable, "-m", "llava_jax.main", *args], cwd=_ROOT,
                              capture_output=True, text=True, timeout=120)
      self.assertNotEqual(result.returncode, 0)
      self.assertIn(expected, result.stderr)
      self.assertNotIn("Traceback", result.stderr)


if __name__ == "__main__":
  absltest.main()
