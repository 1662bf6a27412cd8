"""Tests of the `rsna_pneumonia` builder and its DICOM decoding."""

import io

import numpy as np
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
import pytest

from care_jax.data import info as info_lib
from care_jax.data import rsna_pneumonia as rsna
from care_jax.data._files import images
from tests.helpers import data_fixtures as fx

NAMES = rsna.CLASS_NAMES  # Lung Opacity, No Lung Opacity / Not Normal, Normal
OPACITY, NOT_NORMAL, NORMAL = range(3)
SIZE = 64
# Pixel boxes (x, y, width, height); edges on multiples of 4 pixels, whole
# pixels at 16 x 16.
BOX_A = (16, 8, 24, 16)
BOX_B = (44, 40, 12, 16)


def write_dicom(
  path, stored, *, photometric='MONOCHROME2', bits_stored=8, signed=False, rescale=None, jpeg=False
):
  """Writes ``stored`` (the stored pixel values) as a DICOM file."""
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = uid.generate_uid()
  meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.PatientID = path.stem
  ds.Modality = 'CR'
  ds.Rows, ds.Columns = stored.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated = 8 if bits_stored <= 8 else 16
  ds.BitsStored = bits_stored
  ds.HighBit = bits_stored - 1
  ds.PixelRepresentation = int(signed)
  if rescale is not None:
    ds.RescaleSlope, ds.RescaleIntercept = rescale
  if jpeg:  # JPEG baseline, as RSNA's own files.
    buffer = io.BytesIO()
    Image.fromarray(stored.astype(np.uint8)).save(buffer, 'JPEG', quality=95)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds['PixelData'].VR = 'OB'
    ds['PixelData'].is_undefined_length = True
    meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
  else:
    dtype = {8: np.uint8, 16: np.int16 if signed else np.uint16}
    ds.PixelData = stored.astype(dtype[ds.BitsAllocated]).tobytes()
  path.parent.mkdir(parents=True, exist_ok=True)
  ds.save_as(path, enforce_file_format=True)


GREY = np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 256


@pytest.mark.parametrize(
  'kwargs, stored, expected',
  [
    (dict(), GREY, GREY),
    (dict(photometric='MONOCHROME1'), GREY, 255 - GREY),
    (dict(bits_stored=12), GREY * 16, np.round(GREY * 16 * 255 / 4095)),
    (dict(bits_stored=16), GREY * 257, GREY),
    (dict(bits_stored=12, signed=True), GREY * 16 - 2048, np.round(GREY * 16 * 255 / 4095)),
    # A linear modality rescale moves the range along: no change ...
    (dict(bits_stored=12, rescale=(2.0, -1024.0)), GREY * 16, np.round(GREY * 16 * 255 / 4095)),
    # ... unless it flips it.
    (dict(rescale=(-1.0, 0.0)), GREY, 255 - GREY),
    (dict(photometric='MONOCHROME1', rescale=(-1.0, 100.0)), GREY, GREY),
  ],
)
def test_dicom_to_rgb(tmp_path, kwargs, stored, expected):
  write_dicom(tmp_path / 'x.dcm', stored, **kwargs)
  rgb = rsna.dicom_to_rgb(tmp_path / 'x.dcm')
  assert rgb.dtype == np.uint8 and rgb.shape == (SIZE, SIZE, 3)
  for channel in range(3):
    np.testing.assert_array_equal(rgb[..., channel], expected)
  assert rsna.dicom_header(tmp_path / 'x.dcm') == (SIZE, SIZE)


def test_jpeg_compressed_dicom_decodes(tmp_path):
  smooth = np.add.outer(np.arange(SIZE), np.arange(SIZE)) * 2
  write_dicom(tmp_path / 'x.dcm', smooth, jpeg=True)
  rgb = rsna.dicom_to_rgb(tmp_path / 'x.dcm')
  assert np.abs(rgb[..., 0].astype(int) - smooth).max() <= 3


def test_unreadable_dicoms_raise(tmp_path):
  (tmp_path / 'text.dcm').write_text('not a dicom')
  with pytest.raises(images.UnreadableFile, match='cannot read DICOM'):
    rsna.dicom_header(tmp_path / 'text.dcm')
  with pytest.raises(images.UnreadableFile, match='cannot decode DICOM'):
    rsna.dicom_to_rgb(tmp_path / 'text.dcm')
  write_dicom(tmp_path / 'rgb.dcm', GREY, photometric='RGB')
  with pytest.raises(images.UnreadableFile, match='expected one MONOCHROME1/2 frame, got 1 frame'):
    rsna.dicom_to_rgb(tmp_path / 'rgb.dcm')
  _truncate_pixels(tmp_path / 'cut.dcm')
  assert rsna.dicom_header(tmp_path / 'cut.dcm') == (SIZE, SIZE)
  with pytest.raises(images.UnreadableFile, match='cannot decode DICOM'):
    rsna.dicom_to_rgb(tmp_path / 'cut.dcm')
  with pytest.raises(images.UnreadableFile, match='does not exist'):
    rsna.dicom_to_rgb(tmp_path / 'none.dcm')


def _truncate_pixels(path):
  write_dicom(path, GREY)
  data = path.read_bytes()
  path.write_bytes(data[: -SIZE * SIZE // 2])


def _image(boxes, monochrome1=False):
  """Display pixels with bright lesions at ``boxes`` (x, y, w, h)."""
  image = fx.lesion_image(SIZE, SIZE, None)
  for x, y, w, h in boxes:
    image[y : y + h, x : x + w] = fx.LESION
  return 255 - image if monochrome1 else image


def _write(root):
  """6 patients per class, several DICOM variants; returns {pid: boxes}."""
  labels = ['patientId,x,y,width,height,Target']
  classes = ['patientId,class']
  boxes = {}
  for k, name in enumerate(NAMES):
    for i in range(6):
      pid = f'{k}{i:02d}0f3a-42c1-uuid'
      boxes[pid] = ([BOX_A] + [BOX_B] * (i % 2)) if k == OPACITY else []
      image = _image(boxes[pid], monochrome1=i == 1)
      path = root / rsna.IMAGES / f'{pid}.dcm'
      if i == 1:
        write_dicom(
          path,
          image.astype(np.int32) * 16,
          photometric='MONOCHROME1',
          bits_stored=12,
          rescale=(1.0, -1024.0),
        )
      elif i == 2:
        write_dicom(path, image.astype(np.int32) * 257, bits_stored=16)
      else:
        write_dicom(path, image, jpeg=i == 3)
      for x, y, w, h in boxes[pid]:
        labels.append(f'{pid},{x:.1f},{y:.1f},{w:.1f},{h:.1f},1')
        classes.append(f'{pid},{name}')  # The file repeats a row per box.
      if not boxes[pid]:
        labels.append(f'{pid},,,,,0')
        classes.append(f'{pid},{name}')
  fx.write_lines(root / rsna.LABELS, labels)
  fx.write_lines(root / rsna.CLASS_INFO, classes)
  return boxes


def _normalised(boxes):
  return [[y / SIZE, x / SIZE, (y + h) / SIZE, (x + w) / SIZE] for x, y, w, h in boxes]


def _builder(root, cache, **params):
  return rsna.from_data_config(fx.data_config('rsna_pneumonia', root, cache, **params))


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  root = tmp_path_factory.mktemp('rsna')
  boxes = _write(root)
  return root, boxes, fx.load_splits(_builder(root, root / 'cache'))


def test_split_counts_per_class_and_patient(written):
  _, boxes, splits = written
  # 6 per class: test round(1.2) = 1, validation clip(round(0.5), 1, 4) = 1.
  assert fx.class_counts(splits['train'], 3) == [4, 4, 4]
  assert fx.class_counts(splits['validation'], 3) == [1, 1, 1]
  assert fx.class_counts(splits['test'], 3) == [1, 1, 1]
  ids = [ex['image_id'].decode() for e in splits.values() for ex in e]
  assert sorted(ids) == sorted(boxes)  # Each patient once.


def test_boxes_for_training_opacity_images_and_all_lesion_boxes(written):
  _, boxes, splits = written
  for split, examples in splits.items():
    for ex in examples:
      pid = ex['image_id'].decode()
      expected = np.reshape(_normalised(boxes[pid]), (-1, 4))
      np.testing.assert_allclose(ex['lesion_boxes'], expected, atol=1e-6)
      if split == 'train' and ex['label'] == OPACITY:
        np.testing.assert_allclose(ex['boxes'], expected, atol=1e-6)
      else:
        assert ex['boxes'].shape == (0, 4)
      assert (NAMES[ex['label']] == 'Lung Opacity') == bool(boxes[pid])


def test_every_dicom_variant_shows_the_lesions_bright(written):
  _, boxes, splits = written
  for examples in splits.values():
    for ex in examples:
      expected = _image(boxes[ex['image_id'].decode()])
      assert ex['image'].shape == (SIZE, SIZE, 3)
      error = np.abs(ex['image'][..., 1].astype(int) - expected)
      assert error.max() <= 25 and error.mean() < 2


def test_boxes_land_on_the_lesions_through_the_pipeline(written, tmp_path):
  root, _, _ = written
  config = fx.data_config('rsna_pneumonia', root, tmp_path, stored_size=32)
  info = info_lib.get_dataset_info(config)
  assert info.class_names == NAMES and info.rare_classes == (OPACITY,)
  assert info.split_sizes == {'train': 12, 'validation': 3, 'test': 3}
  assert fx.assert_masks_cover_the_drawn_lesions(config) == 4


def _first_line(path, pid):
  return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if line.startswith(pid))


def _edit_line(path, pid, new):
  lines = path.read_text().splitlines()
  line = _first_line(path, pid)
  lines[line - 1] = new
  fx.write_lines(path, lines)
  return line


def _normal_with_target(root, boxes):
  pid = [p for p in boxes if p.startswith('2')][0]
  line = _edit_line(root / rsna.LABELS, pid, f'{pid},1,1,4,4,1')
  return (
    rf"train_labels.csv, line {line}: patient {pid}: Target \['1'\] does not match class 'Normal'"
  )


def _target_zero_with_box(root, boxes):
  pid = [p for p in boxes if p.startswith('1')][0]
  line = _edit_line(root / rsna.LABELS, pid, f'{pid},1,1,4,4,0')
  return rf'train_labels.csv, line {line}: Target=0 with a box'


def _missing_dicom(root, boxes):
  pid = list(boxes)[4]
  (root / rsna.IMAGES / f'{pid}.dcm').unlink()
  return (
    rf'train_labels.csv, line {_first_line(root / rsna.LABELS, pid)}: DICOM file .* does not exist'
  )


def _garbage_dicom(root, boxes):
  pid = list(boxes)[7]
  (root / rsna.IMAGES / f'{pid}.dcm').write_bytes(b'\0' * 10)
  return rf'train_labels.csv, line {_first_line(root / rsna.LABELS, pid)}: cannot read DICOM'


def _truncated_dicom(root, boxes):
  pid = list(boxes)[8]
  _truncate_pixels(root / rsna.IMAGES / f'{pid}.dcm')
  return rf'train_labels.csv, line {_first_line(root / rsna.LABELS, pid)}: cannot decode DICOM'


def _box_outside(root, boxes):
  pid = list(boxes)[0]
  line = _edit_line(root / rsna.LABELS, pid, f'{pid},50,8,20,16,1')
  return rf'train_labels.csv, line {line}: patient {pid}: box .* outside the 64x64'


def _not_in_class_info(root, boxes):
  pid = list(boxes)[13]
  _edit_line(root / rsna.CLASS_INFO, pid, 'someone-else,Normal')
  return (
    rf'train_labels.csv, line {_first_line(root / rsna.LABELS, pid)}: patient {pid!r} is not in'
  )


def _unknown_class(root, boxes):
  pid = list(boxes)[14]
  line = _edit_line(root / rsna.CLASS_INFO, pid, f'{pid},Pneumonia')
  return rf"class_info.csv, line {line}: unknown class 'Pneumonia'"


def _bad_target(root, boxes):
  pid = list(boxes)[15]
  line = _edit_line(root / rsna.LABELS, pid, f'{pid},,,,,2')
  return rf"train_labels.csv, line {line}: Target must be 0 or 1, got '2'"


BAD = {
  'Target=1 for a Normal patient': _normal_with_target,
  'Target=0 with a box': _target_zero_with_box,
  'missing DICOM': _missing_dicom,
  'not a DICOM': _garbage_dicom,
  'truncated pixel data': _truncated_dicom,
  'box outside the image': _box_outside,
  'patient not in class info': _not_in_class_info,
  'unknown class': _unknown_class,
  'bad Target': _bad_target,
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_input_raises_naming_file_and_line(tmp_path, case):
  message = BAD[case](tmp_path, _write(tmp_path))
  with pytest.raises(ValueError, match=message):
    _builder(tmp_path, tmp_path / 'cache').download_and_prepare()


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_rows_can_be_skipped(tmp_path, case):
  BAD[case](tmp_path, _write(tmp_path))
  builder = _builder(tmp_path, tmp_path / 'cache', skip_bad_rows=True)
  builder.download_and_prepare()
  total = sum(s.num_examples for s in builder.info.splits.values())
  assert total == (18 if case == 'box outside the image' else 17)


def test_conflicting_classes_and_missing_files_always_raise(tmp_path):
  boxes = _write(tmp_path)
  pid = list(boxes)[1]  # Two boxes: two class rows.
  path = tmp_path / rsna.CLASS_INFO
  line = _first_line(path, pid)
  _edit_line(path, pid, f'{pid},Normal')
  with pytest.raises(
    ValueError,
    match=(
      rf"line {line + 1}: patient {pid} has class 'Lung Opacity', but "
      rf".*line {line} says 'Normal'"
    ),
  ):
    _builder(tmp_path, tmp_path / 'c', skip_bad_rows=True).download_and_prepare()
  path.unlink()
  with pytest.raises(ValueError, match=r'(?s)class_info.csv does not exist.*kaggle'):
    _builder(tmp_path, tmp_path / 'c')
