"""One hierarchy of errors; `cli.py` alone turns them into messages and exit codes."""

from __future__ import annotations


class PerfgateError(Exception):
    """Base of every error perfgate reports to a user."""

    exit_code = 2


class ConfigError(PerfgateError):
    """models.yaml (or a command's arguments) is wrong: usage error, exit 2."""

    exit_code = 2


class StoreError(PerfgateError):
    """The store cannot answer: unknown run, build or model."""

    exit_code = 2


class NoResults(StoreError):
    """A build has no stored results (yet): `gate --measure` measures a first round instead of giving up."""


class ImportFormatError(PerfgateError):
    """A foreign result file could not be read."""

    exit_code = 2


class SynthError(PerfgateError):
    """A synthetic model cannot be written as asked."""

    exit_code = 2
