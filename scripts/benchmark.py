"""`python scripts/benchmark.py ARGS` is `metarl benchmark ARGS` (see `metarl benchmark --help`)."""

import sys

from metarl.cli import main

sys.exit(main(["benchmark", *sys.argv[1:]]))
