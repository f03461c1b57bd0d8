"""Declared schemas of the files one stage hands another: the keys, dtypes and shapes a reader needs.

A reader checks what it loaded against its file's schema before using it, so a file of the wrong
shape is one line (the file, what is wrong, how to get it back) rather than a KeyError deep inside a
stage, or a number computed from the wrong arrays. The schemas themselves live next to the reader that
owns each format; this module only knows how to check one.

Two kinds: arrays of an .npz (`Array`: dtype kinds and named axes, whose sizes must agree across the
file), and a JSON tree (plain dicts of required keys, `Optional` keys, `Each` for free keys, leaves
such as `NUMBER`). Keys a schema does not name are allowed, and `named_only` leaves them out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from robust_cifar.errors import InputError, get_back

# numpy dtype kinds, as a reader would name them
KIND_NAMES = {"f": "floats", "i": "integers", "u": "integers", "U": "text", "S": "bytes", "b": "booleans",
              "c": "complex numbers", "O": "objects", "M": "dates", "m": "time spans", "V": "raw records"}


def refuse(path: str | Path, produced_by: str, problem: str, get_back_path: str | Path | None = None) -> InputError:
    """The one line for a file that does not hold what its stage writes."""
    return InputError(f"{path} does not hold what {produced_by} writes ({problem}): "
                      f"{get_back(path if get_back_path is None else get_back_path, produced_by)}")


# --- arrays ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Array:
    """One array of an .npz: the dtype kinds it may have ("f" float, "iu" integer, "U" text) and, per axis,
    the name of its size. Axes of the same name must have the same size everywhere in the file (and the
    size a caller knows, where it names one); no axis may be empty; floats must be finite. `below`: the values are whole numbers
    in [0, the size of that axis), as labels index the class names."""
    kinds: str
    axes: tuple[str, ...]
    below: str | None = None


def _kinds(kinds: str) -> str:
    return " or ".join(dict.fromkeys(KIND_NAMES[kind] for kind in kinds))


def array_problem(arrays: Mapping[str, np.ndarray], schema: Mapping[str, Array],
                  known: Mapping[str, tuple[int, str]] = {}) -> str | None:
    """What keeps `arrays` from matching `schema`, in a few words; None when it matches.

    `known`: {axis: (size, where that size comes from)}, e.g. {"classes": (10, "the data")}."""
    missing = [key for key in schema if key not in arrays]
    if missing:
        return f"no {', '.join(missing[:3])}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    sizes = {axis: size for axis, (size, _) in known.items()}
    source = {axis: where for axis, (_, where) in known.items()}
    for key, spec in schema.items():
        array = arrays[key]
        if array.dtype.kind not in spec.kinds:
            held = KIND_NAMES.get(array.dtype.kind, array.dtype.kind)
            return f"{key} holds {held} ({array.dtype}), not {_kinds(spec.kinds)}"
        if array.ndim != len(spec.axes):
            return (f"{key} has {array.ndim} dimension{'s' * (array.ndim != 1)} {tuple(array.shape)}, "
                    f"not {len(spec.axes)} ({' x '.join(spec.axes)})")
        for axis, size in zip(spec.axes, array.shape):
            if size == 0:
                return f"{key} has no {axis}"
            if axis in sizes and sizes[axis] != size:
                return f"{key} has {size} {axis}, {source[axis]} {sizes[axis]}"
            sizes.setdefault(axis, size)
            source.setdefault(axis, key)
    for key, spec in schema.items():
        array = arrays[key]
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            return f"{key} holds {np.count_nonzero(~np.isfinite(array)):,} NaN or infinite values"
        if spec.below is not None and (array.min() < 0 or array.max() >= sizes[spec.below]):
            return f"{key} holds values outside 0..{sizes[spec.below] - 1} (its {spec.below})"
    return None


def check_arrays(arrays: Mapping[str, np.ndarray], schema: Mapping[str, Array], path: str | Path, produced_by: str,
                 known: Mapping[str, tuple[int, str]] = {}) -> None:
    """Refuse, in one line naming `path` and how to get it back, arrays that do not match `schema`."""
    problem = array_problem(arrays, schema, known)
    if problem:
        raise refuse(path, produced_by, problem)


# --- JSON --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Leaf:
    """A JSON value that holds no keys: its name in a message, and whether a value is one."""
    name: str
    accepts: Callable[[Any], bool] = field(repr=False)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:   # an integer too large for a float
        return False


NUMBER = Leaf("a number", lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
              and _finite(value))
WHOLE = Leaf("a whole number", lambda value: isinstance(value, int) and not isinstance(value, bool))
TEXT = Leaf("text", lambda value: isinstance(value, str))


@dataclass(frozen=True)
class Optional:
    """A key of an object that may be absent; when present its value matches `value`."""
    value: Any


@dataclass(frozen=True)
class Each:
    """An object whose keys are free (eps values, attack names) and whose every value matches `value`;
    it may be empty."""
    value: Any


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "an empty object" if not value else "an object"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, bool) or value is None:
        return f"`{'null' if value is None else str(value).lower()}`"
    shown = repr(value)
    return "text" if isinstance(value, str) else f"`{shown if len(shown) <= 24 else shown[:20] + '...'}`"


def _where(location: str) -> str:
    return f"`{location}`" if location else "the file"


def tree_problem(tree: Any, schema: Any, location: str = "") -> str | None:
    """What keeps a JSON `tree` from matching `schema`, in a few words; None when it matches."""
    while isinstance(schema, Optional):   # present, so it must match
        schema = schema.value
    if isinstance(schema, Leaf):
        return None if schema.accepts(tree) else f"{_where(location)} is {_describe(tree)}, not {schema.name}"
    if not isinstance(tree, dict):
        wanted = (f"an object with {', '.join(key for key, value in schema.items() if not isinstance(value, Optional))}"
                  if isinstance(schema, dict) else "an object")
        return f"{_where(location)} is {_describe(tree)}, not {wanted}"
    if isinstance(schema, Each):
        entries = [(key, schema.value) for key in tree]
    else:
        absent = [key for key, value in schema.items() if key not in tree and not isinstance(value, Optional)]
        if absent:
            return f"{_where(location)} has no {', '.join(f'`{key}`' for key in absent[:3])}" + (
                f" and {len(absent) - 3} more keys" if len(absent) > 3 else "")
        entries = [(key, value.value if isinstance(value, Optional) else value)
                   for key, value in schema.items() if key in tree]
    for key, value in entries:
        problem = tree_problem(tree[key], value, f"{location}.{key}" if location else str(key))
        if problem:
            return problem
    return None


def check_tree(tree: Any, schema: Any, path: str | Path, produced_by: str) -> None:
    """Refuse, in one line naming `path` and how to get it back, a JSON tree that does not match `schema`."""
    problem = tree_problem(tree, schema)
    if problem:
        raise refuse(path, produced_by, problem)


def named_only(tree: Any, schema: Any) -> Any:
    """A `tree` that matches `schema`, with only the keys the schema names: what a reader hands on, so that a key
    it does not know (allowed in the file) never reaches a computation that takes every key."""
    while isinstance(schema, Optional):
        schema = schema.value
    if isinstance(schema, Leaf):
        return tree
    if isinstance(schema, Each):
        return {key: named_only(value, schema.value) for key, value in tree.items()}
    return {key: named_only(tree[key], value) for key, value in schema.items() if key in tree}


def map_leaves(schema: Any, leaf: Callable[[Leaf], Any], each: Callable[[Each], Any] = lambda each: each) -> Any:
    """`schema` with every leaf replaced by `leaf(it)`, and every `Each` (rebuilt over the new leaves) by `each(it)`:
    how a writer that summarises another's file derives its schema from the other's."""
    if isinstance(schema, Leaf):
        return leaf(schema)
    if isinstance(schema, Optional):
        return Optional(map_leaves(schema.value, leaf, each))
    if isinstance(schema, Each):
        return each(Each(map_leaves(schema.value, leaf, each)))
    return {key: map_leaves(value, leaf, each) for key, value in schema.items()}
