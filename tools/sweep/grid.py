"""The grid of a sweep: `-S key=v1,v2` flags -> the cartesian product of experiments, each named after its overrides.

Values are split at commas outside brackets and quotes, so a list value (`methods=[baseline,angular]`)
or a quoted string (`data.archive="a,b.tar.gz"`) stays whole; repeating a key adds values
(`-S seeds.plan=0 -S seeds.plan=1` is `-S seeds.plan=0,1`). Every value is handed to
`dvc exp run -S key=value` exactly as written (DVC parses it as YAML).
"""
from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass

from ruamel.yaml import YAMLError

from robust_cifar.params import parse_yaml


# Each experiment is checked (about 60 ms on a CPU), then queued as a `dvc exp run`: a grid larger than this is
# more likely a typo than a plan, and would be checked silently for a minute or more
MAX_EXPERIMENTS = 1000


class SweepError(ValueError):
    """A sweep that cannot start: a malformed flag, a bad name, a missing remote."""


@dataclass(frozen=True)
class Experiment:
    name: str
    overrides: tuple[tuple[str, str], ...]   # (params key, value as written), in the order of the -S flags

    def set_params(self) -> list[str]:
        """The `dvc exp run` arguments that set this experiment's params."""
        return [arg for key, value in self.overrides for arg in ("-S", f"{key}={value}")]

    def describe(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.overrides)


def quoted(text: str) -> str:
    """`text` as one quoted value of DVC's -S (Hydra's grammar), read back exactly whatever it holds: a path with
    commas, brackets, quotes, `${`, backslashes or letters beyond ASCII, which unquoted DVC refuses or changes."""
    # in a quoted value, backslashes before a quote, before `${` or at its end escape; elsewhere they are literal
    return "'" + re.sub(r"(\\*)('|\$\{|$)", lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), text) + "'"


_CLOSING = {"[": "]", "{": "}", "(": ")"}


def split_values(text: str) -> list[str]:
    """`30,40,[a,b],"x,y"` -> ['30', '40', '[a,b]', '"x,y"']: commas inside brackets or quotes do not split."""
    values, current, stack, quote = [], [], [], None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in _CLOSING:
            stack.append(_CLOSING[char])
        elif stack and char == stack[-1]:
            stack.pop()
        elif char == "," and not stack:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    if quote or stack:
        raise SweepError(f"unbalanced {'quote' if quote else 'bracket'} in values {text!r}")
    values.append("".join(current).strip())
    return values


def parse_axes(flags: list[str]) -> list[tuple[str, list[str]]]:
    """`["a.b=1,2", "c=x", "a.b=3"]` -> [("a.b", ["1", "2", "3"]), ("c", ["x"])]: keys in first-seen order."""
    axes: dict[str, list[str]] = {}
    for flag in flags:
        key, sep, values = flag.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SweepError(f"-S {flag!r}: expected KEY=VALUE[,VALUE...] (for example knn.k=3,5)")
        parsed = split_values(values)
        if any(value == "" for value in parsed):
            raise SweepError(f"-S {flag!r}: empty value (quote a value that is an empty string: {key}='')")
        known = axes.setdefault(key, [])
        for value in map(as_read, parsed):   # a value given twice (`knn.k=1,1`, `1,1.0`) is one experiment, not two
            if not any(alike(value, other) for other in known):
                known.append(value)
    if not axes:
        raise SweepError("nothing to sweep: give at least one -S KEY=VALUE[,VALUE...]")
    return [(key, [written for written, _ in values]) for key, values in axes.items()]


NOT_YAML = object()


def as_read(value: str) -> tuple[str, object]:
    """A value as written and as YAML reads it, the way DVC reads `-S` values (NOT_YAML where it does not parse).
    Each value is parsed once: a 100-value axis compared pairwise took seconds."""
    try:
        return value, parse_yaml(value)
    except YAMLError:
        return value, NOT_YAML


def alike(first: tuple[str, object], second: tuple[str, object]) -> bool:
    """Whether two values (`as_read`) are the same text or read alike: 1 and 1.0 alike; true and 1 not."""
    (text, read), (other_text, other_read) = first, second
    if text == other_text:
        return True
    return (read is not NOT_YAML and other_read is not NOT_YAML and read == other_read
            and isinstance(read, bool) == isinstance(other_read, bool))


def short_keys(keys: list[str]) -> dict[str, str]:
    """The last component of each key (`angular.alpha` -> `alpha`), or the whole key where two would collide."""
    def last(key: str) -> str:
        return key.rpartition(":")[2].rpartition(".")[2]
    counts: dict[str, int] = {}
    for key in keys:
        counts[last(key)] = counts.get(last(key), 0) + 1
    return {key: last(key) if counts[last(key)] == 1 else key.rpartition(":")[2] for key in keys}


MAX_NAME = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


LONGEST_EXP_NAME = 200   # a git ref is a file: its name (and its .lock) within the 255 bytes a file name may have


def valid_exp_name(name: str) -> bool:
    """What `dvc exp run -n` accepts: a git ref component (git check-ref-format) without '/', short enough to be
    a file name (DVC ran a whole experiment and then failed to save a 300-character one)."""
    return (bool(name) and len(name) <= LONGEST_EXP_NAME and not _UNSAFE.search(name) and ".." not in name
            and not name.startswith((".", "-")) and not name.endswith((".", ".lock")))


def safe_name(text: str) -> str:
    name = _UNSAFE.sub("_", text)
    name = re.sub(r"\.{2,}", ".", name).strip(".")
    name = name[:-len(".lock")] + "_lock" if name.endswith(".lock") else name
    if name.startswith("-"):
        name = "_" + name[1:]
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME - 9].rstrip('.')}-{digest}"
    return name


def experiments(flags: list[str], prefix: str = "") -> list[Experiment]:
    """Every combination of the flags' values, named `<prefix>alpha=30,train=0` (valid, unique exp names)."""
    axes = parse_axes(flags)
    count = math.prod(len(values) for _, values in axes)
    if count > MAX_EXPERIMENTS:
        raise SweepError(f"{' x '.join(str(len(values)) for _, values in axes)} = {count:,} experiments: at most "
                         f"{MAX_EXPERIMENTS:,} in one sweep; split the grid into smaller sweeps")
    keys = [key for key, _ in axes]
    short = short_keys(keys)
    result, seen = [], set()
    for combination in itertools.product(*(values for _, values in axes)):
        overrides = tuple(zip(keys, combination))
        name = safe_name(prefix + ",".join(f"{short[key]}={value}" for key, value in overrides))
        base, number = name, 2
        while name in seen:
            name, number = f"{base}-{number}", number + 1
        if not valid_exp_name(name):
            raise SweepError(f"cannot make a valid experiment name from {prefix!r} + the overrides (got {name!r})")
        seen.add(name)
        result.append(Experiment(name, overrides))
    return result
