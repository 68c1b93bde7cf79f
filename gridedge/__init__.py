"""The ``gridedge`` command: one entry point whose subcommands live in the packages that own them."""

__version__ = "0.1.0"
