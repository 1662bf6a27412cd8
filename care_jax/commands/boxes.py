"""``care-jax boxes``: generated boxes of a config's dataset -> boxes.csv.

    care-jax boxes --method=otsu --config=synthetic_care --out=boxes.csv \\
        [--stage1_workdir=RUN] [--masks_dir=DIR] [--margin=0.1]

(also ``python -m care_jax.commands.boxes ...``). Writes one ``image,xmin,ymin,xmax,ymax`` row per
box found on the rare-class training images (the folder format, DESIGN 3.1),
for inspection and editing; on multi-label data one ``image,label,xmin,ymin,xmax,ymax`` row per
(image, positive rare finding), ``label`` the finding's name.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from care_jax.boxes import generators
from care_jax.commands import _app
from care_jax.commands import _flags

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  None,
  'A packaged config name or a config file (its data config is used).',
  lock_config=True,
)
_METHOD = flags.DEFINE_enum('method', None, generators.METHODS, 'Box generator.')
_OUT = flags.DEFINE_string('out', None, 'The boxes.csv file to write.')
_STAGE1 = flags.DEFINE_string(
  'stage1_workdir', None, 'grad_cam: workdir of the stage-1 (cross-entropy) run.'
)
_MASKS = flags.DEFINE_string(
  'masks_dir', None, 'mask: folder of masks <stem>.png or <stem>_segmentation.png.'
)
_MARGIN = flags.DEFINE_float(
  'margin',
  None,
  'Grow each box by this fraction of its size per side (default: config.data.boxes.margin, 0).',
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Imported here, not at the top: it loads TensorFlow, which `--help` does not need.
  from care_jax.boxes import dataset  # pylint: disable=g-import-not-at-top

  data_config = _CONFIG.value.data
  box_config = data_config.boxes.copy_and_resolve_references()
  if _STAGE1.value is not None:
    box_config.grad_cam.stage1_workdir = _STAGE1.value
  if _MASKS.value is not None:
    box_config.mask.masks_dir = _MASKS.value
  if _MARGIN.value is not None:
    box_config.margin = _MARGIN.value
  result = dataset.generated_boxes(data_config, method=_METHOD.value, box_config=box_config)
  result.write_csv(_OUT.value)
  print(
    f'{int(result.found.sum())} of {len(result.found)} rare-class training images boxed '
    f'by {_METHOD.value}; wrote {_OUT.value}'
  )


def run():
  flags.mark_flags_as_required(['config', 'method', 'out'])
  _app.run(main, flags_parser=_flags.parse_flags, reads_datasets=True)


if __name__ == '__main__':
  run()
