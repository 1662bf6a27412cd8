"""Shared parts of the datasets built from files the user already has, one module per job.

`folder`, `isic2018`, `rsna_pneumonia`, `nih_chestxray14` and `chexpert` import the modules they
use:

* `care_jax.data._files.rows`: reading the CSV files, paths, numbers and pixel boxes of their
  rows, and the bad rows (`rows.Problems`: an error, or counted skips);
* `care_jax.data._files.images`: the image and mask files (headers, decoding, storing);
* `care_jax.data._files.splits`: the examples read (`splits.Record`), the split assignment and
  the check that every class is in every split;
* `care_jax.data._files.builder`: the tfds builder they share (`builder.FilesBuilder`), its
  config and the checks of the ``data.<dataset>`` parameters;
* `care_jax.data._files.multilabel`: what differs for a multi-label dataset (several classes per
  image, e.g. ChestX-ray14).
* `care_jax.data._files.class_folders`: class-folder trees (``DATA_DIR/[<split>/]<class>/<image>``),
  which `folder` reads when there is no labels.csv.
"""
