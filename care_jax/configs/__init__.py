"""The configs that ship with care-jax: `--config=NAME` names one, `care-jax configs` lists them.

Each module defines `get_config()`, which starts from `care_jax.config.default_config` and
changes a few fields; its docstring holds the command that runs it. In a clone of the repository
the same files are under `configs/`, so `--config=configs/NAME.py` names them too.
"""
