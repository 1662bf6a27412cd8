"""Helpers that several test files share (none of them is a test module).

Imported as modules: ``from tests.helpers import data_fixtures as fx``.

* `paths`: the repository root and the committed fixtures.
* `runs`: tiny training configs, and stand-ins for a run that the suite tests use.
* `folder_run`: a small folder dataset written here, and a short run trained on it (the
  session fixture `folder_run` of tests/conftest.py).
* `checkpoints`: the checkpoints of small runs (writing them, reading them back).
* `data_fixtures`: tiny fixture files of every dataset format, data configs, batch checks.
* `steps`: a tiny model's train step, batch and written-out loss (the step tests).
* `loss_references`: numpy references of the classification losses.
* `model_fixtures`: abstract and numpy-filled variables of models, numpy convolutions.
* `blobs`: images of drawn lesions and their boxes (the box generators).
* `versions`: what changed in the config since 0.1, and the runs written by 0.1 and 0.2.
* `torch_layout`: torchvision-layout state dicts written in numpy.
* `torch_venv`: the torch environment of the parity tests; `torch_reference.py` is the
  script it runs (by path, under that environment), `torchvision_import.py` the torchvision
  import such scripts share.
* `benchmark_scripts`: imports and runs the scripts of benchmarks/.
* `command_line`: runs the `care-jax` command (and the command modules) as a user does; the
  run of ``care-jax train`` that several tests check (the session fixture `care_jax_train_run`).
* `reexports`: checks that a package's names are those of its modules.
"""
