"""Subcommands of the ``wsi-mamba`` CLI: each module registers its own with a ``register`` function."""

from __future__ import annotations

from . import cohort, compare, models, patches, slides, workflows

# Modules whose ``register(subparsers)`` adds subcommands; add new command modules here.
COMMAND_MODULES = (slides, models, workflows, patches, cohort, compare)

# Errors a user can cause (bad file, bad annotation): the CLI prints them on one line, exit code 1.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    slides.EXPECTED_ERRORS
    + models.EXPECTED_ERRORS
    + workflows.EXPECTED_ERRORS
    + patches.EXPECTED_ERRORS
    + compare.EXPECTED_ERRORS
)
