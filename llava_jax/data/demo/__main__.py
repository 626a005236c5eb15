"""`python -m llava_jax.data.demo --out=data/demo [--seed=0]`: (re)generate the demo dataset."""

from absl import app, flags

from llava_jax.data.demo import build

_OUT = flags.DEFINE_string("out", "data/demo", "Output directory.")
_SEED = flags.DEFINE_integer("seed", 0, "RNG seed; 0 reproduces the shipped files.")


def main(argv):
  del argv
  demo = build.write_demo(_OUT.value, _SEED.value)
  print(f"wrote {len(demo.images)} images, {len(demo.pretrain)} pretrain and "
        f"{len(demo.finetune)} finetune records to {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
