"""The ``lipkit`` command line (typer): ``demo``, ``train``, ``certify``, ``report``, ``estimate``.

The top layer: it may import everything below it and nothing imports it.
"""

from lipkit.cli.app import app, main

__all__ = ["app", "main"]
