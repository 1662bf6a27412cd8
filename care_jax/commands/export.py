"""Exports a checkpoint of a trained run as a serialized `jax.export` (StableHLO) artifact.

    care-jax export --workdir=RUN --output=DIR [--checkpoint=best|latest|STEP] \\
        [--platforms=cpu,cuda,tpu]

(also `python -m care_jax.commands.export ...`). Writes ``DIR/model.stablehlo`` (preprocessed
images [batch, S, S, 3] -> class probabilities, batch size symbolic, the
weights inside) and ``DIR/model.json`` (class names, input shape, mean/std and
the preprocessing). docs/inference.md, "Export", has the loader, which needs
jax only (`care_jax.inference.export`).
"""

from absl import app
from absl import flags

from care_jax import inference
from care_jax.commands import _app
from care_jax.commands import _flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when this module runs as the program: importing it (tests,
  # notebooks) adds no flags that could clash with other entry points.
  flags.DEFINE_string('workdir', None, 'The trained run.', required=True)
  flags.DEFINE_string('output', None, 'The directory to write the artifact to.', required=True)
  _flags.define_checkpoint()
  flags.DEFINE_list('platforms', ['cpu', 'cuda', 'tpu'], 'Backends the artifact runs on.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Bad input (ValueError, OSError) ends in one line, exit 2 (care_jax.commands._app).
  predictor = inference.Predictor.from_workdir(FLAGS.workdir, checkpoint=FLAGS.checkpoint)
  meta = inference.export(predictor, FLAGS.output, platforms=FLAGS.platforms)
  print(
    f'exported step {meta["step"]} of {FLAGS.workdir} for {", ".join(meta["platforms"])} '
    f'to {FLAGS.output}'
  )


def run():
  _define_flags()
  _app.run(main)


if __name__ == '__main__':
  run()
