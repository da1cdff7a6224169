"""``python -m metarl``: the same as the ``metarl`` command."""

from metarl.cli import run

run()
