"""Every command-line module can be imported next to every other one.

Flags are process-global in absl: a module that defined `--config` or `--out` at import time would
make any later importer of another such module fail with DuplicateFlagError (tests, notebooks and
tools import several). So each CLI defines its flags only when it runs as the program.
"""

import importlib

from absl import flags
from absl.testing import absltest
from absl.testing import parameterized

CLI_MODULES = (
    "llava_jax.main", "llava_jax.bench.train_step", "llava_jax.bench.generate", "llava_jax.chat",
    "llava_jax.serve", "llava_jax.webui", "llava_jax.bench.serve", "llava_jax.evaluate",
    "llava_jax.convert.__main__",
    "llava_jax.bench.convert_memory", "llava_jax.data.validate", "llava_jax.data.inspect",
    "llava_jax.data.prepare", "llava_jax.bench.data_pipeline", "tools.make_demo.__main__",
    "llava_jax.datagen.__main__", "llava_jax.datagen.text",
)


class CliFlagsTest(parameterized.TestCase):

  def test_importing_every_cli_defines_no_flag(self):
    before = set(flags.FLAGS)
    for name in CLI_MODULES:
      importlib.import_module(name)
    defined = {f: flags.FLAGS.find_module_defining_flag(f) for f in set(flags.FLAGS) - before}
    from_clis = {f: m for f, m in defined.items() if m and m.startswith(("llava_jax", "tools"))}
    self.assertEmpty(from_clis, "these flags are defined at import time")

  @parameterized.parameters(*CLI_MODULES)
  def test_cli_has_a_flag_definer_called_under_main(self, name):
    module = importlib.import_module(name)
    self.assertTrue(callable(getattr(module, "define_flags", None)), name)
    with open(module.__file__) as f:
      self.assertIn('if __name__ == "__main__":\n  define_flags()', f.read(), name)


if __name__ == "__main__":
  absltest.main()
