"""What every benchmark script shares: its argument parser, one error line per failure, the results folder.

Every script is run from the repository root as ``python -m benchmarks.<name>`` and exposes
``main(argv) -> int``. Bad input (an argparse error, a :class:`~metarl.errors.MetarlError`, a
``ValueError`` or a missing file) ends as one ``error: ...`` line on stderr and exit status 2
(3 for a diverged run, 130/143 for an interrupt); ``--debug`` shows the traceback. Results go
to ``--results DIR`` when given, else to a folder of the benchmark's own run, never to the
repository's ``results/`` unless asked for with ``--results results``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from metarl.cli import add_config_flags
from metarl.errors import MetarlError

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (configs/ lives there)."""

CONFIGS = ROOT / "configs"

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
"""Student-t 0.975 quantiles by degrees of freedom (a CI across a handful of seeds)."""


def seed_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width across seeds (Student t; NaN for one seed)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    return mean, T_975.get(n - 1, 1.96) * sd / n**0.5


def csv(kind: Callable[[str], Any]) -> Any:
    """An argparse type: a comma-separated list of ``kind`` (a type or an argparse type function)."""

    def parse(text: str) -> list[Any]:
        return [kind(item) for item in text.split(",") if item.strip()]

    return parse


class UsageError(Exception):
    """A command-line error found by argparse (reported as one ``error:`` line, exit status 2)."""


class BenchParser(argparse.ArgumentParser):
    """An argument parser whose errors raise :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise :class:`UsageError` with argparse's message."""
        raise UsageError(message)


def make_parser(module: str, doc: str | None) -> BenchParser:
    """The parser of ``benchmarks.<module>`` with its docstring as help, and ``--debug``."""
    parser = BenchParser(
        prog=f"python -m benchmarks.{module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def add_config(parser: argparse.ArgumentParser, default: Path) -> None:
    """``--config`` (defaulting to ``default``, a file under configs/) and ``--set``, as in the ``metarl`` command."""
    add_config_flags(parser)
    parser.set_defaults(config=default)
    action = parser._option_string_actions["--config"]
    action.help = f"YAML config (default: {default.relative_to(ROOT) if default.is_relative_to(ROOT) else default})"


def add_progress(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: hide progress bars."""
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_results(parser: argparse.ArgumentParser, default: str) -> None:
    """``--results DIR``: where tables and figures go (``default`` describes where they go without it)."""
    parser.add_argument(
        "--results",
        type=Path,
        help=f"where to write the tables and figures (default: {default}; "
        "the repository's results/ only with --results results)",
    )


def command_line(module: str, argv: Sequence[str]) -> str:
    """The command that reproduces this invocation, e.g. ``python -m benchmarks.bench_learning --seed 1``."""
    return shlex.join(["python", "-m", f"benchmarks.{module}", *argv])


def run_main(parser: BenchParser, body: Callable[[argparse.Namespace], int], argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run ``body(args)``; every error a user can cause becomes one ``error:`` line.

    ``args.argv`` holds the arguments (for the recorded command). Returns the exit status. The
    torch thread count (which training sets from ``train.num_threads``) is restored afterwards,
    so that calling ``main`` in-process leaves the caller as it was.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return report(str(exc), 2, None)
    args.argv = argv
    threads = torch.get_num_threads()
    try:
        return body(args)
    except MetarlError as exc:
        return report(str(exc) or type(exc).__name__, exc.exit_code, exc if args.debug else None)
    except KeyboardInterrupt as exc:
        return report("interrupted", 130, exc if args.debug else None)
    except (ValueError, FileNotFoundError, PermissionError, NotImplementedError) as exc:
        return report(str(exc) or type(exc).__name__, 2, exc if args.debug else None)
    finally:
        torch.set_num_threads(threads)


def report(message: str, code: int, exc: BaseException | None) -> int:
    """Print ``error: message`` (after the traceback of ``exc`` when given) to stderr; return ``code``."""
    if exc is not None:
        traceback.print_exception(exc)
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"error: {first}", file=sys.stderr, flush=True)
    return code


def log(message: str) -> None:
    """A progress or notice line on stderr."""
    print(message, file=sys.stderr, flush=True)
