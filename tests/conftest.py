"""Test-wide setup: 8 fake CPU devices for sharding tests, strict rank promotion, and one
temporary root per test process that is removed when the process ends."""

import os
import shutil
import tempfile

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

SYSTEM_TMP = tempfile.gettempdir()
# Every tempfile.mkdtemp / TemporaryDirectory of the tests (and of subprocesses that inherit
# TMPDIR) lands here; a test that forgets to clean up leaves nothing behind.
TMP_ROOT = tempfile.mkdtemp(prefix="llava_jax_tests_")
os.environ["TMPDIR"] = TMP_ROOT
tempfile.tempdir = TMP_ROOT

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_unconfigure(config):
  del config
  tempfile.tempdir = SYSTEM_TMP
  shutil.rmtree(TMP_ROOT, ignore_errors=True)


# The tier of each test without its own `unit` / `integration` marker, by module: integration
# runs programs in subprocesses, servers, notebooks, several processes or whole training runs;
# the rest is unit (`pytest -m unit`, the quick check).
INTEGRATION_MODULES = frozenset({
    "test_bench", "test_chat", "test_colab", "test_convert", "test_datagen", "test_evaluate",
    "test_launch", "test_loop", "test_main", "test_multihost", "test_serve",
})


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if item.get_closest_marker("unit") or item.get_closest_marker("integration"):
      continue
    module = item.module.__name__.rpartition(".")[2]
    item.add_marker("integration" if module in INTEGRATION_MODULES else "unit")
