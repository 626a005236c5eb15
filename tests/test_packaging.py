"""The package installs on its own: declared dependencies cover every import; the wheel works.

Issue 18, point 1: `tests/test_serve.py` once imported `openai`, which no requirements file listed;
CI passed only because the machine had it.
"""

import ast
import importlib.metadata
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile

from absl.testing import absltest
import pytest

import tiny

REPO = tiny.REPO
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
OURS = {"llava_jax", "configs", "tools", "tests"} | {p.stem for p in (REPO / "tests").rglob("*.py")}


def _name(requirement: str) -> str:
  """'orbax-checkpoint>=0.12' → 'orbax-checkpoint' (PEP 503 normalized)."""
  return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement)[0]).lower()


def _requirements(path: pathlib.Path) -> set[str]:
  lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
  return {_name(line) for line in lines if line and not line.startswith("-r")}


def _third_party_imports(root: pathlib.Path) -> dict[str, str]:
  """Top-level module imported → first file importing it, for modules outside the stdlib."""
  found = {}
  for path in sorted(root.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        names = [node.module]
      else:
        continue
      for name in names:
        top = name.split(".")[0]
        if top not in sys.stdlib_module_names and top not in OURS:
          found.setdefault(top, str(path.relative_to(REPO)))
  return found


@pytest.mark.unit
class DeclaredTest(absltest.TestCase):

  def _assert_declared(self, root: str, declared: set[str]):
    distributions = importlib.metadata.packages_distributions()
    for module, where in _third_party_imports(REPO / root).items():
      names = {_name(d) for d in distributions.get(module, [module])}
      self.assertTrue(names & declared, f"{where} imports {module!r} (distribution "
                      f"{sorted(names)}), which pyproject.toml does not declare")

  def test_library_imports_are_dependencies_or_test_extras(self):
    # torch is imported only by the parity benchmark (llava_jax/bench/torch_reference.py): a test extra.
    # libtpu only by `llava_jax.bench.aot` (compiling for TPU without one): the `tpu` extra.
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    declared |= {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["tpu"]}
    self._assert_declared("llava_jax", declared | {"torch"})

  def test_test_imports_are_declared(self):
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    declared |= {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["test"]}
    self._assert_declared("tests", declared)

  def test_requirements_files_pin_every_declared_dependency(self):
    runtime = _requirements(REPO / "requirements.txt")
    test = _requirements(REPO / "requirements-test.txt")
    for requirement in PYPROJECT["project"]["dependencies"]:
      self.assertIn(_name(requirement), runtime, "requirements.txt")
    for requirement in PYPROJECT["project"]["optional-dependencies"]["test"]:
      self.assertIn(_name(requirement), test | runtime, "requirements-test.txt")


@pytest.mark.integration
class WheelTest(absltest.TestCase):

  def test_wheel_builds_and_imports_outside_the_checkout(self):
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="wheel_"))
    self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
    # setuptools builds in the source tree (build/, *.egg-info): build from a copy.
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "llava_jax", src / "llava_jax", ignore=ignore)
    for part in ("pyproject.toml", "README.md"):
      shutil.copy(REPO / part, src / part)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("llava_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in ("prompts/text_templates.json", "prompts/conv/system_message.txt"):
      self.assertTrue(f"llava_jax/datagen/{data}" in names, f"{data} is not in the wheel")

    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    probe = ("import llava_jax, llava_jax.infer.api, llava_jax.main\n"
             "from llava_jax.config import schema, training\n"
             "schema.model_config('llava15_7b'), training.MODEL_FOR_PRESET\n"
             "from llava_jax.datagen import flan, prompts\n"
             "assert llava_jax.__file__.startswith(%r), llava_jax.__file__\n"
             "prompts.load('conv')\n"
             "print(len(flan.templates()))\n") % str(site)
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp, env={"PYTHONPATH": str(site)},
                          capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertGreater(int(proc.stdout.split()[-1]), 0)


if __name__ == "__main__":
  absltest.main()
