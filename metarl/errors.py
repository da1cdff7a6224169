"""The exceptions a user can cause, and how the ``metarl`` command reports them.

Every error a user can cause (a bad config, a missing or unreadable checkpoint, a run
directory that belongs to another run, a failing env, a diverged run) is a
:class:`MetarlError`. The command line (:mod:`metarl.cli`) prints it as one ``error:`` line
and exits with its :attr:`~MetarlError.exit_code`; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class MetarlError(Exception):
    """An error the user caused or can fix; reported as one line, exit status :attr:`exit_code`."""

    exit_code: int = 2


class ConfigError(MetarlError, ValueError):
    """A config key is unknown or its value is not allowed."""


class CheckpointError(MetarlError):
    """A checkpoint is missing, truncated, or not a metarl checkpoint."""


class RunDirError(MetarlError):
    """A run directory holds another run, or another process is writing it."""


class EnvError(MetarlError):
    """An env raised or returned non-finite data during sampling (names the env, iteration and task)."""


class TrainingDiverged(MetarlError):
    """Training produced a non-finite or exploding value; the last good checkpoint is kept."""

    exit_code = 3


class BaselineError(MetarlError, ValueError):
    """A baseline that cannot be built for this env or config (reported as one ``error:`` line)."""


class BenchmarkError(MetarlError, ValueError):
    """A benchmark request that cannot run: unknown methods, a supervised checkpoint, a bad protocol."""


class RenderError(MetarlError, ValueError):
    """A task spec, task count or env that cannot be rendered (reported as one ``error:`` line)."""


class DataError(MetarlError, ValueError):
    """A data set is missing, incomplete or unreadable (the message says where to put it)."""
