"""`python scripts/train.py ARGS` is `metarl train ARGS` (see `metarl train --help`)."""

import sys

from metarl.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
