"""The command-line faces of care-jax: flags in, a library call, output.

`care-jax COMMAND` runs `care_jax.commands.COMMAND` (`cli.COMMANDS`); each module is also a
program of its own (``python -m care_jax.commands.train``). Nothing here is library: what a
command does is a function of the package below it (docs/architecture.md).
"""
