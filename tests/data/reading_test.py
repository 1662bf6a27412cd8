"""A prepared split read into memory: the stored examples in their order, their ids, multi-hot."""

import numpy as np
import tensorflow as tf

from care_jax.data import reading
from care_jax.data import registry
from care_jax.data import synthetic_lesions as sl
from tests.helpers import data_fixtures as fx


def test_read_split_holds_the_stored_examples_in_their_order(config):
  builder = registry.prepared_builder(config)
  table = reading.read_split(builder, 'train')
  stored = fx.raw_examples(config, 'train')  # decoded by tfds itself
  assert table.labels.dtype == np.int64 and table.labels.tolist() == [ex['label'] for ex in stored]
  assert len(table.box_splits) == len(stored) + 1 and table.box_splits[0] == 0
  for n, ex in enumerate(stored):
    np.testing.assert_array_equal(tf.io.decode_png(table.images[n]).numpy(), ex['image'])
    boxes = table.box_values[table.box_splits[n] : table.box_splits[n + 1]]
    np.testing.assert_array_equal(boxes, ex['boxes'].reshape(-1, 4))
  np.testing.assert_array_equal(table.annotated(), [len(ex['boxes']) > 0 for ex in stored])
  assert table.annotated().sum() == 8  # the rare training images (classes 2 and 4) have boxes
  assert table.box_labels is None and table.masks is None and table.label_masks is None
  assert reading.class_names_of(builder) == sl.CLASS_NAMES and not reading.is_multilabel(builder)


def test_example_ids_name_each_example_once_in_the_stored_order(config):
  builder = registry.prepared_builder(config)
  ids = reading.example_ids(builder, 'test')
  assert len(ids) == len(set(ids)) == sum(fx.SYNTHETIC['test_counts'])
  # synthetic_lesions has no image_id: the tfds ids, shard file and position in it.
  shards = {i.rsplit('__', 1)[0] for i in ids}
  assert len(shards) == 1 and shards.pop().startswith('synthetic_lesions-test.tfrecord')
  assert [int(i.rsplit('__', 1)[1]) for i in ids] == list(range(len(ids)))
  assert reading.example_ids(builder, 'test').tolist() == ids.tolist()


def test_multi_hot_marks_each_listed_class_once():
  np.testing.assert_array_equal(reading.multi_hot(tf.constant([0, 3, 3]), 5), [1, 0, 0, 1, 0])
  np.testing.assert_array_equal(reading.multi_hot(tf.zeros([0], tf.int64), 3), [0, 0, 0])
