"""A SIGTERM during training: noticed at the next step, the previous handler restored."""

import os
import signal

from care_jax import checkpoint
from care_jax.training import preemption
from tests.helpers import checkpoints as ckpt_fx


def test_sigterm_is_noticed_and_the_previous_handler_restored(tmp_path):
  previous = signal.getsignal(signal.SIGTERM)
  with checkpoint.RunCheckpoints(str(tmp_path), ckpt_fx.config(), meta={}) as ckpts:
    with preemption.PreemptionWatch(ckpts) as watch:
      assert not watch.requested(1)
      os.kill(os.getpid(), signal.SIGTERM)
      assert watch.requested(2)
  assert signal.getsignal(signal.SIGTERM) == previous
