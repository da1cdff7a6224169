"""`python scripts/render.py ARGS` is `metarl render ARGS` (see `metarl render --help`)."""

import sys

from metarl.cli import main

sys.exit(main(["render", *sys.argv[1:]]))
