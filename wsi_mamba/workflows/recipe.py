"""Recipes: YAML files in ``pipelines/`` listing ``wsi-mamba`` commands to run in order.

A recipe has a ``name``, a ``workdir`` (made if missing; commands run there; a relative one is relative to the
recipe file's folder, not the current one; default: that folder), optional ``vars`` (``${name}``
in commands is replaced; ``--set name=value`` overrides) and ``steps``, each with a ``name``, a ``run``
(the command line after ``wsi-mamba``) and an optional ``creates``: a path that, when it exists, marks the
step as done, so a rerun resumes where it stopped (every command writes its outputs atomically).
"""

from __future__ import annotations

import os
import shlex
import string
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]
    creates: str | None


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    workdir: Path
    steps: list[Step]


def _substitute(text: str, variables: dict[str, str], where: str) -> str:
    try:
        return string.Template(text).substitute(variables)
    except KeyError as exc:
        raise ValueError(
            f"{where}: unknown variable ${{{exc.args[0]}}} (define it under vars: or with --set)"
        ) from None
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _resolve_variables(variables: dict[str, str], where: str) -> dict[str, str]:
    """Variables may use each other (``train: ${data}/train``); a cycle is an error naming the file."""
    resolved = dict(variables)
    for _ in range(len(resolved) + 1):
        updated = {k: _substitute(v, resolved, where) for k, v in resolved.items()}
        if updated == resolved:
            placeholders = [f"${{{name}}}" for name in resolved]
            if not any(p in value for p in placeholders for value in resolved.values()):
                return resolved
            break
        resolved = updated
    raise ValueError(f"{where}: variables refer to each other in a cycle")


def load_recipe(path: str | Path, overrides: dict[str, str] | None = None, workdir: str | Path | None = None) -> Recipe:
    """Parse and check a recipe; ``ValueError`` naming the file and the problem."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise ValueError(f"{path}: YAML aliases (*name) are not allowed in recipes: write the values out")
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise ValueError(f"{path}: recipe not found") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list) or not data["steps"]:
        raise ValueError(f"{path}: a recipe needs a non-empty 'steps' list")
    variables = {str(k): str(v) for k, v in (data.get("vars") or {}).items()}
    unknown = sorted(set(overrides or {}) - set(variables))
    if unknown:
        raise ValueError(f"{path}: --set of variables the recipe does not define: {', '.join(unknown)}")
    variables.update(overrides or {})
    variables = _resolve_variables(variables, str(path))
    steps = []
    for index, raw in enumerate(data["steps"], start=1):
        where = f"{path}: step {index}"
        if not isinstance(raw, dict) or "run" not in raw:
            raise ValueError(f"{where}: each step needs 'run' (the command after wsi-mamba)")
        name = str(raw.get("name", f"step-{index}"))
        run = raw["run"]
        argv = (
            shlex.split(_substitute(run, variables, where))
            if isinstance(run, str)
            else [_substitute(str(a), variables, where) for a in run]
        )
        if argv and argv[0] == "run":
            raise ValueError(f"{where}: a recipe step cannot run a recipe ('run'): list its steps here instead")
        creates = _substitute(str(raw["creates"]), variables, where) if raw.get("creates") else None
        escapes = creates is not None and Path(os.path.normpath(creates)).parts[:1] == ("..",)
        if creates is not None and (Path(creates).is_absolute() or escapes):
            raise ValueError(f"{where}: creates {creates!r} must be a path inside the workdir")
        steps.append(Step(name, argv, creates))
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: step names must be unique")
    if workdir:  # given on the command line: relative to the current folder
        base = Path(workdir)
    else:  # in the recipe: relative to the recipe's folder, wherever it is run from
        base = path.parent / _substitute(str(data.get("workdir", ".")), variables, str(path))
    return Recipe(str(data.get("name", path.stem)), path, base, steps)


@contextmanager
def _inside(folder: Path) -> Iterator[None]:
    previous = Path.cwd()
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def run_recipe(
    recipe: Recipe,
    run_command: Callable[[Sequence[str]], int],
    only: Sequence[str] = (),
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> int:
    """Run the steps (or those named in ``only``) with ``run_command(argv) -> exit code``; stops at the first
    failure and returns its code. Steps whose ``creates`` exists are skipped unless named in ``only``."""
    missing = sorted(set(only) - {s.name for s in recipe.steps})
    if missing:
        raise ValueError(f"{recipe.path}: no step named {', '.join(missing)}")
    with _inside(recipe.workdir):
        for number, step in enumerate(recipe.steps, start=1):
            if only and step.name not in only:
                continue
            header = f"[{number}/{len(recipe.steps)}] {step.name}"
            if not only and step.creates and Path(step.creates).exists():
                log(f"{header}: done already ({step.creates} exists)")
                continue
            log(f"{header}: wsi-mamba {shlex.join(step.argv)}")
            if dry_run:
                continue
            code = run_command(step.argv)
            if code != 0:
                log(f"{header}: failed with exit code {code}")
                return code
    return 0
