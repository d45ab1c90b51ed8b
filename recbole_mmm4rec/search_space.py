"""Hyper-parameter search spaces: RecBole's ``.hyper`` files and a YAML form, as Ray Tune domains.

Both formats name the same four kinds, with RecBole's meaning (``recbole.trainer.HyperTuning``):

* ``choice``: one of the listed values.
* ``uniform low,high``: a float drawn uniformly from [low, high].
* ``quniform low,high,q``: uniform, rounded to a multiple of ``q``; integers when all three are
  integers (``hidden_size quniform 32,128,32``), because a model cannot take ``64.0`` layers.
* ``loguniform low,high``: ``exp(uniform(low, high))``: the bounds are *natural logarithms*, as in
  RecBole and hyperopt (``learning_rate loguniform -9.21,-4.61`` draws from 1e-4 to 1e-2).

``.hyper`` (RecBole's file): one parameter a line, ``name kind value``; the value of ``choice`` is
a Python list literal (``embedding_size choice [64, 96]``), the others comma-separated numbers.
Blank lines and lines starting with ``#`` are skipped.

YAML (``.yaml``/``.yml``; RecBole's ``params_dict``): a mapping kind -> {name: value}::

    choice: {hidden_size: [32, 64], fusion: [static, dynamic_shared]}
    loguniform: {learning_rate: [-9.21, -4.61]}
    uniform: {dropout_prob: [0.1, 0.5]}
    quniform: {n_layers: [1, 3, 1]}

A malformed file raises :class:`SearchSpaceError` naming the file, the line and what was expected.
"""
from __future__ import annotations

import ast
import math
import os
from dataclasses import dataclass
from typing import Any

import yaml

KINDS = ("choice", "uniform", "quniform", "loguniform")
_BOUND_COUNTS = {"uniform": 2, "quniform": 3, "loguniform": 2}


class SearchSpaceError(ValueError):
    """A search-space file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Parameter:
    """One searched config key: ``kind`` is one of :data:`KINDS`; ``values`` are the choices
    (``choice``) or the bounds (``low, high`` and ``q`` for ``quniform``)."""

    name: str
    kind: str
    values: tuple
    line: int  # 1-based line in its file, for messages


def load_search_space(path: str) -> list[Parameter]:
    """The parameters of a ``.hyper`` or YAML space file, in file order."""
    if not os.path.isfile(path):
        raise SearchSpaceError(f"search space file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    is_yaml = path.endswith((".yaml", ".yml"))
    parameters = _parse_yaml(path, text) if is_yaml else _parse_hyper(path, text)
    if not parameters:
        raise SearchSpaceError(f"{path}: names no parameter to search")
    seen: dict[str, int] = {}
    for parameter in parameters:
        if parameter.name in seen:
            raise SearchSpaceError(
                f"{path}, line {parameter.line}: {parameter.name} is already searched on line "
                f"{seen[parameter.name]}"
            )
        seen[parameter.name] = parameter.line
    return parameters


def _parse_hyper(path: str, text: str) -> list[Parameter]:
    parameters = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split(None, 2)
        if len(fields) < 3:
            raise SearchSpaceError(
                f"{path}, line {number}: expected 'name kind value' (e.g. 'learning_rate "
                f"loguniform -9.21,-4.61'), found {stripped!r}"
            )
        name, kind, value = fields
        where = f"{path}, line {number}"
        if kind == "choice":
            try:
                choices = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise SearchSpaceError(
                    f"{where}: the values of {name} must be a Python list literal such as "
                    f"[64, 128] or ['static', 'dynamic_shared'], found {value!r}"
                ) from None
            parameters.append(_checked(where, name, kind, choices, number))
        else:
            try:
                bounds = [float(v) for v in value.replace(" ", "").split(",")]
            except ValueError:
                raise SearchSpaceError(
                    f"{where}: the bounds of {name} must be comma-separated numbers, found {value!r}"
                ) from None
            parameters.append(_checked(where, name, kind, bounds, number))
    return parameters


def _parse_yaml(path: str, text: str) -> list[Parameter]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        raise SearchSpaceError(
            f"{path}{line}: not valid YAML ({getattr(error, 'problem', None) or error})"
        ) from None
    if root is None:
        return []
    if not isinstance(root, yaml.MappingNode):
        raise SearchSpaceError(
            f"{path}, line {root.start_mark.line + 1}: expected a mapping of kinds "
            f"({', '.join(KINDS)}) to {{name: values}}"
        )
    loader = yaml.SafeLoader("")
    parameters = []
    for kind_node, block in root.value:
        where = f"{path}, line {kind_node.start_mark.line + 1}"
        if not isinstance(block, yaml.MappingNode):
            raise SearchSpaceError(f"{where}: {kind_node.value} must map parameter names to values")
        for name_node, value_node in block.value:
            number = name_node.start_mark.line + 1
            values = loader.construct_object(value_node, deep=True)
            if not isinstance(values, list):
                raise SearchSpaceError(
                    f"{path}, line {number}: {name_node.value} needs a list ({'values' if kind_node.value == 'choice' else 'bounds'}), found {values!r}"
                )
            parameters.append(
                _checked(f"{path}, line {number}", str(name_node.value), str(kind_node.value), values, number)
            )
    return parameters


def _checked(where: str, name: str, kind: str, values: Any, line: int) -> Parameter:
    """A :class:`Parameter` whose kind and values make sense, else an error at ``where``."""
    if kind not in KINDS:
        raise SearchSpaceError(f"{where}: unknown kind {kind!r} for {name}; expected one of {', '.join(KINDS)}")
    if kind == "choice":
        if not isinstance(values, (list, tuple)) or not values:
            raise SearchSpaceError(f"{where}: choice for {name} needs a non-empty list, found {values!r}")
        return Parameter(name, kind, tuple(values), line)
    expected = _BOUND_COUNTS[kind]
    if len(values) != expected or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        shape = "low,high,q" if kind == "quniform" else "low,high"
        raise SearchSpaceError(f"{where}: {kind} for {name} needs {shape} (numbers), found {values!r}")
    low, high = values[0], values[1]
    if not low < high:
        raise SearchSpaceError(f"{where}: {kind} for {name} needs low < high, found {low} and {high}")
    if kind == "quniform" and not values[2] > 0:
        raise SearchSpaceError(f"{where}: quniform step q for {name} must be positive, found {values[2]}")
    return Parameter(name, kind, tuple(values), line)


def ray_param_space(parameters: list[Parameter], exhaustive: bool = False) -> dict[str, Any]:
    """Ray Tune domains for ``parameters``; with ``exhaustive``, every ``choice`` becomes a grid
    (each value tried; ``num_samples`` then repeats the grid), as RecBole's exhaustive search."""
    from ray import tune

    space = {}
    for p in parameters:
        if p.kind == "choice":
            space[p.name] = tune.grid_search(list(p.values)) if exhaustive else tune.choice(list(p.values))
        elif p.kind == "uniform":
            space[p.name] = tune.uniform(*p.values)
        elif p.kind == "loguniform":
            space[p.name] = tune.loguniform(math.exp(p.values[0]), math.exp(p.values[1]))
        elif all(float(v).is_integer() for v in p.values):
            space[p.name] = tune.qrandint(*(int(v) for v in p.values))
        else:
            space[p.name] = tune.quniform(*p.values)
    return space
