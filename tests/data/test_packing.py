"""data.pack: several samples per row, no image-slot overflow, and no cross-sample leakage."""

import json
import os
import shutil

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from data_samples import BAD
from data_samples import assert_resumes_exactly
from data_samples import data_config
from data_samples import good_records
from data_samples import temp_data_dir
from data_samples import write_jsonl
from llava_jax import model as model_lib
from llava_jax.config import schema
from llava_jax.data import pipeline
from llava_jax.data import tokenize
from llava_jax.train import loss as loss_lib


class PackingTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir, cls.images = temp_data_dir()
    cls.path = os.path.join(cls.dir, "mixed.jsonl")
    good = good_records(12)
    # Skip markers between good samples: packing must count and drop them as batching does.
    write_jsonl(cls.path, good[:5] + [e for e, _ in list(BAD.values())[:3]] + good[5:])
    cls.model_cfg = schema.model_config("tiny")
    cls.model = model_lib.build(cls.model_cfg)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.dir)
    super().tearDownClass()

  def data(self, **overrides):
    return data_config(self.path, self.images, **{"max_len": 256, "max_images": 2, **overrides})

  def iterator(self, batch=2, **overrides):
    return pipeline.make_train_iterator(self.data(**overrides), self.model_cfg,
                                        global_batch_size=batch, seed=0)

  def test_packed_rows(self):
    it = self.iterator(pack=True)
    image_id = self.model_cfg.image_token_id
    per_row = []
    for _ in range(4):
      b = next(it)
      self.assertEqual(b["input_ids"].shape, (2, 256))
      self.assertEqual(b["pixels"].shape, (2, 2, 64, 64, 3))
      for r in range(2):
        seg, pos, ids = b["segment_ids"][r], b["positions"][r], b["input_ids"][r]
        k = int(seg.max())
        per_row.append(k)
        n = int(np.count_nonzero(seg))
        self.assertTrue(np.all(seg[n:] == 0))        # padding only at the end
        bounds = np.flatnonzero(np.diff(seg[:n])) + 1
        starts = np.concatenate([[0], bounds])
        self.assertEqual(seg[starts].tolist(), list(range(1, k + 1)))   # segments 1..k in order
        for s, e in zip(starts, np.concatenate([bounds, [n]])):
          self.assertEqual(pos[s:e].tolist(), list(range(e - s)))       # positions restart
          self.assertEqual(ids[s], 1)                                     # each sample has <s>
          self.assertEqual(b["labels"][r, s], tokenize.IGNORE)           # never a target
        runs = int((ids == image_id).sum()) // 64
        self.assertLessEqual(runs, 2)                 # no image-slot overflow
        # Slots in use hold an image, the rest zeros.
        used = [bool(b["pixels"][r, j].any()) for j in range(2)]
        self.assertEqual(used, [j < runs for j in range(2)])
    self.assertGreater(max(per_row), 1)
    self.assertGreater(sum(per_row) / len(per_row), 1.5)

  def test_packed_loss_equals_unpacked_loss(self):
    packed = next(self.iterator(pack=True))
    num_samples = int(packed["segment_ids"].max(axis=1).sum())
    # The same stream, unpacked: the first num_samples usable samples, one per row.
    unpacked = next(self.iterator(batch=num_samples))
    params = self.model.init(jax.random.key(0), unpacked["input_ids"][:1],
                             unpacked["pixels"][:1])["params"]
    loss = jax.jit(lambda p, b: loss_lib.model_loss(self.model, p, b, jax.random.key(1)))
    got_sum, got_count = loss(params, packed)
    want_sum, want_count = loss(params, unpacked)
    self.assertEqual(int(got_count), int(want_count))
    self.assertGreater(int(got_count), 0)
    # fp32: the sum (~500) is compared relatively, the per-token mean to 1e-5 absolute.
    np.testing.assert_allclose(float(got_sum), float(want_sum), rtol=1e-5)
    np.testing.assert_allclose(float(got_sum) / int(got_count), float(want_sum) / int(want_count),
                               atol=1e-5)

  @parameterized.parameters(0, 2)
  def test_restore_is_exact_with_a_sample_waiting(self, num_workers):
    unbroken = self.iterator(pack=True, num_workers=num_workers)
    try:
      want = [next(unbroken) for _ in range(2)]
      state = json.loads(json.dumps(unbroken.get_state()))
      want += [next(unbroken) for _ in range(4)]   # crosses an epoch boundary
      report = unbroken.skip_report()
    finally:
      unbroken.close()
    assert_resumes_exactly(self, self.iterator(pack=True, num_workers=num_workers), state,
                           want[2:], report)
    self.assertGreaterEqual(report["epoch"], 1)

if __name__ == "__main__":
  absltest.main()
