"""Class-folder trees: the images of a directory whose folder names are the labels.

Two layouts, as torchvision's ``ImageFolder`` and Kaggle's chest X-ray set write them::

  DATA_DIR/<class>/<image>            class folders (the splits are generated)
  DATA_DIR/<split>/<class>/<image>    split folders, each with class folders

**Detection** (`scan`): the visible folders of DATA_DIR (not starting with ``.``) are split
folders when every one of them is named ``train``, ``val``, ``validation`` or ``test``
(`SPLIT_FOLDERS`; ``val`` is 'validation'), class folders when none is; a mix of both is an
error, as are ``val`` and ``validation`` side by side. **Classes** are the class folders' names
sorted as Python sorts strings (torchvision's ``ImageFolder`` order), the union over the split
folders. **Images** are the files ending in ``.png``, ``.jpg`` or ``.jpeg`` (any case) anywhere
below a class folder (subfolders included, as ``ImageFolder``); hidden files and folders and
other files (``.DS_Store``, ``Thumbs.db``, notes) are passed over. An image file directly in
DATA_DIR or in a split folder, where no class folder says its label, and a class folder without
any image are errors.
"""

from collections.abc import Iterable
import dataclasses
import os
import pathlib

# Split folder name -> split.
SPLIT_FOLDERS = {'train': 'train', 'val': 'validation', 'validation': 'validation', 'test': 'test'}
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')


@dataclasses.dataclass(frozen=True)
class TreeImage:
  """An image of a class-folder tree.

  Attributes:
    key: its path relative to DATA_DIR, POSIX separators (the ``image_id``).
    path: the file.
    label: its class folder's name.
    split: 'train', 'validation' or 'test' from its split folder, or None.
  """

  key: str
  path: pathlib.Path
  label: str
  split: str | None


def _visible(names: Iterable[str]) -> list[str]:
  return sorted(name for name in names if not name.startswith('.'))


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_SUFFIXES)


def _folders(directory: pathlib.Path, exclude: Iterable[pathlib.Path]) -> list[pathlib.Path]:
  """The visible subfolders of ``directory``, less ``exclude``; raises for an image file in it."""
  excluded = {path.resolve() for path in exclude}
  entries = _visible(os.listdir(directory))
  loose = [name for name in entries if _is_image(name) and (directory / name).is_file()]
  if loose:
    raise ValueError(
      f'{directory / loose[0]}: an image outside any class folder ({len(loose)} in'
      f' {directory}); put each image into the folder of its class.'
    )
  return [
    directory / name
    for name in entries
    if (directory / name).is_dir() and (directory / name).resolve() not in excluded
  ]


def _class_images(root: pathlib.Path, folder: pathlib.Path, split: str | None) -> list[TreeImage]:
  found = []
  for directory, subfolders, files in os.walk(folder):
    subfolders[:] = _visible(subfolders)  # Walked in this order; hidden ones not at all.
    for name in _visible(files):
      if _is_image(name):
        path = pathlib.Path(directory) / name
        key = path.relative_to(root).as_posix()
        found.append(TreeImage(key=key, path=path, label=folder.name, split=split))
  if not found:
    raise ValueError(
      f'{folder}: a class folder without any image ({", ".join(IMAGE_SUFFIXES)} files);'
      ' remove it or add its images.'
    )
  return found


def scan(root: pathlib.Path, *, exclude: Iterable[pathlib.Path] = ()) -> list[TreeImage]:
  """The images of the class-folder tree ``root`` (module docstring), sorted by key.

  Args:
    root: DATA_DIR.
    exclude: folders of DATA_DIR that are not class or split folders (e.g. the
      prepared data's ``data.cache_dir`` when it lies inside DATA_DIR).

  Returns:
    The images; an empty list when ``root`` has no folder.

  Raises:
    ValueError: naming the folder or file for split and class folders side by
      side, both ``val`` and ``validation``, an image outside a class folder or
      a class folder without images.
  """
  exclude = list(exclude)
  folders = _folders(root, exclude)
  split_folders = [f for f in folders if f.name in SPLIT_FOLDERS]
  if not split_folders:
    return sorted(
      (image for folder in folders for image in _class_images(root, folder, None)),
      key=lambda image: image.key,
    )
  others = [f.name for f in folders if f.name not in SPLIT_FOLDERS]
  if others:
    raise ValueError(
      f'{root}: split folders {[f.name for f in split_folders]} and other folders {others}'
      f' side by side; use either split folders ({sorted(SPLIT_FOLDERS)}) that hold class'
      ' folders, or class folders only.'
    )
  if {'val', 'validation'} <= {f.name for f in split_folders}:
    raise ValueError(
      f'{root}: both "val" and "validation" split folders; keep one (both mean validation).'
    )
  images = []
  for split_folder in split_folders:
    split = SPLIT_FOLDERS[split_folder.name]
    for folder in _folders(split_folder, exclude):
      images.extend(_class_images(root, folder, split))
  return sorted(images, key=lambda image: image.key)
