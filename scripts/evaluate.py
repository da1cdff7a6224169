"""`python scripts/evaluate.py ARGS` is `metarl evaluate ARGS` (see `metarl evaluate --help`)."""

import sys

from metarl.cli import main

sys.exit(main(["evaluate", *sys.argv[1:]]))
