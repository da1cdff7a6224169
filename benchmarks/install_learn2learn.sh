#!/usr/bin/env bash
# Install learn2learn 0.2.0 into metarl's virtualenv, for benchmarks/bench_learn2learn.py only (it is not a
# dependency of metarl, and neither the default install nor CI installs it).
#
# Why not `pip install learn2learn==0.2.0`: it is an sdist whose Cython-generated C files include
# "longintrepr.h", which Python 3.11 moved (fatal error: longintrepr.h: No such file or directory), and its
# dependencies pull torchvision, whose PyPI wheels are built against CUDA torch (pip would replace the CPU torch
# by a multi-GB CUDA build, and a CUDA torchvision does not load on the CPU torch: "operator torchvision::nms does
# not exist"). So: regenerate the C files with Cython 3, install learn2learn without its dependencies; the
# benchmark loads learn2learn.algorithms.{maml,meta_sgd} (which need neither torchvision nor gym) directly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download learn2learn==0.2.0 --no-deps --no-binary :all: -d "$work"
tar xzf "$work"/learn2learn-0.2.0.tar.gz -C "$work"
"$PY" -m pip install --target "$work/cython" "cython>=3"
src="$work/learn2learn-0.2.0"
for module in meta_dataset task_dataset transforms; do
    PYTHONPATH="$work/cython" "$PY" -m cython -3 "$src/learn2learn/data/$module.pyx" -o "$src/learn2learn/data/$module.c"
done
"$PY" -m pip install --no-deps "$src"
echo "installed learn2learn 0.2.0 (without its dependencies); run: $PY -m benchmarks.bench_learn2learn"
