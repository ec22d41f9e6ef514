"""Subcommands of the ``modelshard`` command, one module per group; see :mod:`modelshard.cli`."""
