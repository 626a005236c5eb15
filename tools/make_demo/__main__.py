"""`python -m tools.make_demo --out=data/demo [--seed=0]`: (re)generate the demo dataset."""

from absl import app
from absl import flags

from tools.make_demo import build

FLAGS = flags.FLAGS


def define_flags():
  """Flags exist only when this module is the program, so tests and tools can import it."""
  flags.DEFINE_string("out", "data/demo", "Output directory.")
  flags.DEFINE_integer("seed", 0, "RNG seed; 0 reproduces the shipped files.")


def main(argv):
  del argv
  demo = build.write_demo(FLAGS.out, FLAGS.seed)
  print(f"wrote {len(demo.images)} images, {len(demo.pretrain)} pretrain and "
        f"{len(demo.finetune)} finetune records to {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
