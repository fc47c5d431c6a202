"""Argument helpers shared by the command modules."""

from __future__ import annotations


class UsageError(ValueError):
    """A command given a combination of arguments it cannot use: one line, exit code 2."""
