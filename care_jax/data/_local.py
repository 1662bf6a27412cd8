"""What the tfds builders of this package share: their data never come from the network.

tfds prints "Downloading and preparing dataset Unknown size (download: Unknown size, ...)" and
"Dataset ... downloaded and prepared" to stdout for every builder, also ours, which only read the
user's files or generate their examples. `LocalData` says instead, at INFO level, what happens.
"""

import logging


class LocalData:
  """Mixin for a `tfds.core.DatasetBuilder` whose examples are read or made on this machine."""

  def _log_download_bytes(self) -> None:  # tfds's hook, called before preparing the data.
    logging.info(
      'preparing %s from local data (nothing is downloaded) in %s', self.name, self.data_dir
    )

  def _log_download_done(self) -> None:  # tfds's hook, called once the data are prepared.
    logging.info('%s prepared in %s; later runs reuse it', self.name, self.data_dir)
