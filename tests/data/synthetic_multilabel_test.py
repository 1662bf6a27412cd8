"""The synthetic_multilabel generator: deterministic examples that follow the multi-label feature
contract, its parameters, and the artefact that comes with the rare findings in training."""

import numpy as np
import pytest

from care_jax import config as config_lib
from care_jax.data import synthetic_multilabel

SMALL = dict(image_size=48, num_train=40, num_validation=16, num_test=24, rare_rate_train=0.3)


def test_generated_examples_are_deterministic_and_follow_the_feature_contract():
  config = synthetic_multilabel.multilabel_config(**SMALL)
  rare = [synthetic_multilabel.CLASS_NAMES.index(n) for n in synthetic_multilabel.RARE_CLASS_NAMES]
  for split in synthetic_multilabel.SPLITS:
    for index in range(config.sizes[split]):
      ex = synthetic_multilabel.generate_example(config, split, index)
      again = synthetic_multilabel.generate_example(config, split, index)
      for key in ex:
        np.testing.assert_array_equal(ex[key], again[key])
      labels = ex['labels'].tolist()
      assert labels == sorted(set(labels)) and len(labels) <= synthetic_multilabel.MAX_FINDINGS
      # One lesion box per finding, in every split.
      assert ex['lesion_box_labels'].tolist() == labels
      # Annotation boxes: the rare findings' lesions of training images only.
      want = [k for k in labels if k in rare] if split == 'train' else []
      assert ex['box_labels'].tolist() == want
      assert ex['boxes'].shape == (len(want), 4)
      boxes = ex['lesion_boxes']
      assert np.all(boxes[:, :2] < boxes[:, 2:]) and np.all((boxes >= 0) & (boxes <= 1))


def test_the_config_defaults_are_the_generators_and_name_the_dataset():
  defaults = config_lib.default_data_config().synthetic_multilabel.to_dict()
  assert defaults == synthetic_multilabel.SyntheticMultilabelConfig().parameters()
  base = synthetic_multilabel.multilabel_config()
  names = {base.name} | {
    synthetic_multilabel.multilabel_config(**{key: value}).name
    for key, value in dict(
      image_size=48, num_train=10, seed=3, pattern_contrast=0.3, artefact=False
    ).items()
  }
  assert len(names) == 6  # Every parameter is part of the name (a cache per dataset).


def test_generator_parameters_are_checked():
  with pytest.raises(ValueError, match=r"Unknown synthetic_multilabel parameter\(s\) \['nope'\]"):
    synthetic_multilabel.multilabel_config(nope=1)
  with pytest.raises(ValueError, match='rare_rate_train must lie in'):
    synthetic_multilabel.multilabel_config(rare_rate_train=1.5)
  with pytest.raises(ValueError, match='num_train must be > 0'):
    synthetic_multilabel.multilabel_config(num_train=0)


def test_the_ruler_comes_with_the_rare_findings_in_training_only():
  config = synthetic_multilabel.multilabel_config(num_train=600, num_validation=0, num_test=600)
  rare = {synthetic_multilabel.CLASS_NAMES.index(n) for n in synthetic_multilabel.RARE_CLASS_NAMES}
  for split, rare_rate, other_rate in (('train', 0.9, 0.05), ('test', 0.05, 0.05)):
    with_rare, without = [], []
    for i in range(600):
      ex = synthetic_multilabel.generate_example(config, split, i)
      (with_rare if rare & set(ex['labels'].tolist()) else without).append(ex['has_artefact'])
    assert abs(np.mean(with_rare) - rare_rate) < 0.1, split
    assert abs(np.mean(without) - other_rate) < 0.05, split
