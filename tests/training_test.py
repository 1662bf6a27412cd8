"""The training package: its names load no TensorFlow (only reading data does)."""


def test_train_steps_import_without_tensorflow():
  # GPU images (and users' own input code) may have no TensorFlow: only
  # train_and_evaluate needs the tf.data pipeline.
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  code = (
    'import sys, care_jax.training, care_jax.config; '
    'assert "tensorflow" not in sys.modules, "tensorflow was imported"'
  )
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
