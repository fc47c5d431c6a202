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

from ..outputs.capped import read_capped_bytes
from .training.configs import PAUSED_EXIT_CODE


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


MAX_RECIPE_BYTES = 256 * 1024
"""The size cap of a recipe file (the shipped ones are a few KB; YAML is parsed in pure Python)."""
MAX_DEPTH = 16
"""How deeply a recipe's mappings and lists may nest (a recipe needs 4: recipe, steps, step, run list)."""
MAX_VALUE_CHARS = 1_000_000
"""The longest a variable (or any other field) may become once its ``${...}`` are expanded."""
MAX_VARIABLES_CHARS = 4_000_000
"""The longest all variables together may become once expanded."""
MAX_COMMAND_CHARS = 65_536
"""The longest a step's command line (or ``creates``) may be once expanded, checked before it is split."""


def _references(text: str) -> list[str]:
    """The variable names ``text`` refers to (``$name`` or ``${name}``; ``$$`` is a literal ``$``)."""
    matches = string.Template.pattern.finditer(text)
    return [m.group("named") or m.group("braced") for m in matches if m.group("named") or m.group("braced")]


def _expanded_length(text: str, variables: dict[str, str]) -> int:
    """The length of ``text`` once substituted (unknown names count as empty), computed without substituting."""
    length = len(text)
    for match in string.Template.pattern.finditer(text):
        name = match.group("named") or match.group("braced")
        if match.group("escaped") is not None:
            length -= 1
        elif name is not None:
            length += len(variables.get(name, "")) - len(match.group(0))
    return length


def _substitute(
    text: str, variables: dict[str, str], where: str, limit: int = MAX_VALUE_CHARS, what: str = "a value"
) -> str:
    """``text`` with its ``${name}`` replaced; ``ValueError`` naming ``where`` for an unknown name, or when the
    result would be longer than ``limit`` (checked before anything is built)."""
    size = _expanded_length(text, variables)
    if size > limit:
        raise ValueError(f"{where}: {what} would expand to {size:,} characters, over the limit of {limit:,}")
    try:
        return string.Template(text).substitute(variables)
    except KeyError as exc:
        raise ValueError(
            f"{where}: unknown variable ${{{exc.args[0]}}} (define it under vars: or with --set)"
        ) from None
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _resolve_variables(variables: dict[str, str], where: str) -> dict[str, str]:
    """Variables may use each other (``train: ${data}/train``): each is expanded once, after those it uses
    (an iterative depth-first walk); a cycle is an error naming the file, and so is a value or a total over
    :data:`MAX_VALUE_CHARS` / :data:`MAX_VARIABLES_CHARS` (``a2: ${a1}${a1}``, ``a3: ${a2}${a2}``, …)."""
    uses = {name: [r for r in _references(text) if r in variables] for name, text in variables.items()}
    resolved: dict[str, str] = {}
    total = 0
    for start in variables:
        path, visiting = [(start, iter(uses[start]))], {start}
        while path:
            name, pending = path[-1]
            child = next((r for r in pending if r not in resolved), None)
            if child in visiting:
                names = [n for n, _ in path]
                cycle = [*names[names.index(child) :], child]
                raise ValueError(f"{where}: variables refer to each other in a cycle ({' -> '.join(cycle)})")
            if child is not None:
                path.append((child, iter(uses[child])))
                visiting.add(child)
                continue
            if name not in resolved:
                resolved[name] = _substitute(variables[name], resolved, where, what=f"variable {name}")
                total += len(resolved[name])
                if total > MAX_VARIABLES_CHARS:
                    raise ValueError(f"{where}: the variables would expand to over {MAX_VARIABLES_CHARS:,} characters")
            visiting.discard(name)
            path.pop()
    return resolved


def _parse(path: Path) -> object:
    """The YAML of a recipe, capped in size and nesting and without aliases; ``ValueError`` naming the file."""
    try:
        text = read_capped_bytes(path, MAX_RECIPE_BYTES).decode("utf-8")
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):  # events: no recursion, nothing built yet
            if isinstance(event, yaml.AliasEvent):
                raise ValueError(f"{path}: YAML aliases (*name) are not allowed in recipes: write the values out")
            depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
            if depth > MAX_DEPTH:
                raise ValueError(f"{path}: nested more than {MAX_DEPTH} levels deep (a recipe needs 4)")
        return yaml.safe_load(text)
    except FileNotFoundError:
        raise ValueError(f"{path}: recipe not found") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def _command(run: object, variables: dict[str, str], where: str) -> list[str]:
    """A step's argv: a string split like a shell would, or a list kept as given; the expanded command is
    capped at :data:`MAX_COMMAND_CHARS` before it is split (``shlex.split`` is slow on megabytes)."""
    if isinstance(run, str):
        return shlex.split(_substitute(run, variables, where, MAX_COMMAND_CHARS, "its command"))
    if not isinstance(run, list) or any(isinstance(a, (list, dict)) for a in run):
        raise ValueError(f"{where}: 'run' must be a string or a list of words")
    size = sum(_expanded_length(str(a), variables) + 1 for a in run)
    if size > MAX_COMMAND_CHARS:
        raise ValueError(f"{where}: its command would expand to {size:,} characters, over {MAX_COMMAND_CHARS:,}")
    return [_substitute(str(a), variables, where) for a in run]


def _creates(raw: dict, variables: dict[str, str], where: str) -> str | None:
    """A step's ``creates``: a path inside the workdir (not the workdir itself, which always exists)."""
    if not raw.get("creates"):
        return None
    creates = _substitute(str(raw["creates"]), variables, where, MAX_COMMAND_CHARS, "creates")
    parts = Path(os.path.normpath(creates)).parts
    if Path(creates).is_absolute() or parts[:1] == ("..",):
        raise ValueError(f"{where}: creates {creates!r} must be a path inside the workdir")
    if parts in ((), (".",)):
        raise ValueError(
            f"{where}: creates {creates!r} is the workdir itself, which always exists (the step would never run): "
            "name a file or folder the step writes"
        )
    return creates


def load_recipe(path: str | Path, overrides: dict[str, str] | None = None, workdir: str | Path | None = None) -> Recipe:
    """Parse and check a recipe; ``ValueError`` naming the file and the problem."""
    path = Path(path)
    data = _parse(path)
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list) or not data["steps"]:
        raise ValueError(f"{path}: a recipe needs a non-empty 'steps' list")
    if not isinstance(data.get("vars") or {}, dict):
        raise ValueError(f"{path}: 'vars' must be a mapping of names to values")
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
        argv = _command(raw["run"], variables, where)
        if argv and argv[0] == "run":
            raise ValueError(f"{where}: a recipe step cannot run a recipe ('run'): list its steps here instead")
        steps.append(Step(name, argv, _creates(raw, variables, where)))
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
            if code == PAUSED_EXIT_CODE:
                log(f"{header}: paused before finishing (exit code {code}): run the recipe again to continue it")
                return code
            if code != 0:
                log(f"{header}: failed with exit code {code}")
                return code
    return 0
