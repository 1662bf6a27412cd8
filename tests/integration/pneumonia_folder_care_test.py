"""configs/pneumonia_folder_care.py on a tree in the layout of Kaggle's chest_xray set."""

from care_jax import boxes
from care_jax import config as config_lib
from care_jax.data import info as info_lib
from tests.helpers import downloaded_layouts

# chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}: NORMAL the minority, as in Kaggle's train/.
COUNTS = {
  'train': {'NORMAL': 3, 'PNEUMONIA': 5},
  'val': {'NORMAL': 1, 'PNEUMONIA': 1},
  'test': {'NORMAL': 2, 'PNEUMONIA': 2},
}


def test_pneumonia_folder_care_with_only_data_dir_reads_the_tree_and_boxes_pneumonia(tmp_path):
  root = tmp_path / 'chest_xray'
  downloaded_layouts.write_class_tree(root, COUNTS)
  config = config_lib.apply_overrides(
    config_lib.load_config('pneumonia_folder_care'),
    [f'data.dir={root}', f'data.cache_dir={tmp_path / "cache"}'],
  )
  config_lib.validate(config)
  info = info_lib.get_dataset_info(config.data)
  on_disk = downloaded_layouts.tree_counts(root)
  assert info.class_names == ('NORMAL', 'PNEUMONIA')
  assert info.rare_classes == (1,)
  assert info.train_class_counts.tolist() == [on_disk['train'][name] for name in info.class_names]
  assert info.split_sizes == {
    split: sum(on_disk[folder].values())
    for folder, split in (('train', 'train'), ('val', 'validation'), ('test', 'test'))
  }
  generated = boxes.generated_boxes(config.data, method=config.data.box_source)
  assert len(generated.indices) == COUNTS['train']['PNEUMONIA'] and generated.found.all()
