"""prepare: ArrayRecord shards give the pipeline exactly the samples the JSON + folder give."""

import json
import os
import shutil
import subprocess
import sys

from absl.testing import absltest
import numpy as np

from data_samples import BAD
from data_samples import good_records
from data_samples import qa
from data_samples import temp_data_dir
from data_samples import write_jsonl
from llava_jax.config import schema
from llava_jax.data import pipeline
from llava_jax.data import prepare
from llava_jax.data import records
from llava_jax.data import shards
import tiny

REPO = str(tiny.REPO)


class PrepareTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir, cls.images = temp_data_dir()
    entries = good_records(8) + [e for e, _ in BAD.values()]
    entries.append(qa("fix_marker", "What is this?", image="img2.png"))
    cls.jsonl = os.path.join(cls.dir, "data.jsonl")
    write_jsonl(cls.jsonl, entries)
    cls.out = os.path.join(cls.dir, "prepared")
    cls.info = prepare.prepare(cls.jsonl, cls.images, cls.out, num_shards=3)
    cls.model = schema.model_config("tiny")

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.dir)
    super().tearDownClass()

  def data(self, path):
    d = schema.data_config()
    d.path, d.image_dir, d.max_len, d.num_workers = path, self.images, 128, 0
    return d

  def test_shards_and_info(self):
    self.assertEqual(self.info["num_records"], 18)
    self.assertLen(self.info["shards"], 3)
    self.assertEqual((self.info["unreadable_entries"], self.info["unreadable_images"]), (1, 1))
    self.assertTrue(pipeline.is_prepared(self.out))
    self.assertLen(shards.ShardSource(self.out), 18)

  def test_same_samples_as_json(self):
    from_json = list(pipeline.iterate_samples(self.data(self.jsonl), self.model))
    from_shards = list(pipeline.iterate_samples(self.data(self.out), self.model))
    self.assertLen(from_shards, len(from_json))
    for (ex_a, a), (ex_b, b) in zip(from_json, from_shards):
      self.assertEqual((ex_a.id, ex_a.data), (ex_b.id, ex_b.data))
      self.assertEqual(a["skip"].split(":")[0], b["skip"].split(":")[0], ex_a.id)
      for k in pipeline.ROW_KEYS:
        if not a["skip"]:
          np.testing.assert_array_equal(a[k], b[k], err_msg=f"{ex_a.id} {k}")

  def test_same_batches_and_skips_as_json(self):
    def run(path):
      it = pipeline.make_train_iterator(self.data(path), self.model, global_batch_size=3, seed=5)
      return [next(it) for _ in range(5)], it.skip_report()["total"]["by_reason"]
    (json_batches, json_skips), (shard_batches, shard_skips) = run(self.jsonl), run(self.out)
    self.assertEqual(json_skips, shard_skips)
    self.assertEqual(set(shard_skips), {kind for _, kind in BAD.values()})
    for a, b in zip(json_batches, shard_batches):
      for k in pipeline.BATCH_KEYS:
        np.testing.assert_array_equal(a[k], b[k])

  def test_record_round_trip(self):
    rec = records.Record("x", {"id": "x", "é": [1]}, "f:1", images=(b"abc", None, b""))
    self.assertEqual(shards.decode(shards.encode(rec)), rec)
    with self.assertRaisesRegex(ValueError, "not a llava_jax.shards"):
      shards.decode(b"JUNKJUNK")

  def test_cli(self):
    out = os.path.join(self.dir, "cli_out")
    cmd = [sys.executable, "-m", "llava_jax.data.prepare", f"--data={self.jsonl}",
           f"--images={self.images}", f"--out={out}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    self.assertEqual(done.returncode, 0, done.stderr)
    self.assertIn("wrote 18 records", done.stdout)
    self.assertIn("1 unreadable entries, 1 unreadable image files", done.stderr)
    with open(os.path.join(out, shards.INFO_FILE)) as f:
      self.assertEqual(json.load(f)["shards"], [shards.shard_name(0, 1)])
    with self.assertRaisesRegex(FileExistsError, "already exists"):
      prepare.prepare(self.jsonl, self.images, out)


if __name__ == "__main__":
  absltest.main()
