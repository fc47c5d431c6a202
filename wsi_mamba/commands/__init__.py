"""Subcommands of the ``wsi-mamba`` CLI: each module registers its own with a ``register`` function."""

from __future__ import annotations

from . import cohort, compare, encoders, models, patches, slides, training, view, workflows

# Modules whose ``register(subparsers)`` adds subcommands; add new command modules here (``workflows`` registers
# ``training``'s, so that ``--help`` lists the commands in the order a study runs them).
COMMAND_MODULES = (slides, models, encoders, workflows, patches, cohort, compare, view)

# Errors a user can cause (bad file, bad annotation): the CLI prints them on one line, exit code 1.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    slides.EXPECTED_ERRORS
    + models.EXPECTED_ERRORS
    + workflows.EXPECTED_ERRORS
    + training.EXPECTED_ERRORS
    + patches.EXPECTED_ERRORS
    + compare.EXPECTED_ERRORS
    + view.EXPECTED_ERRORS
)
