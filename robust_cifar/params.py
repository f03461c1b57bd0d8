"""params.yaml, read and validated: the rule vocabulary and a Params object that remembers what was read.

Each setting's rule lives next to the code that uses it (`TrainConfig.from_params` in training,
`PerturbSettings.from_params` in perturb, each method's section in its own module); they all
read through `Params.value`, which reports a bad value with its dotted key, the value and what
is allowed, and records the key. The record is what keeps dvc.yaml honest: a test compares the
keys each stage read with the keys it declares, and the `params` stage refuses every key of
params.yaml that nothing reads.
"""
from __future__ import annotations

import atexit
import copy
import difflib
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ruamel.yaml import YAMLError

from robust_cifar.errors import ParamsError

# For the guard test that compares the keys each stage reads with those dvc.yaml declares
# (tests/test_guards.py, through DVC, so through the environment): a directory where each process that
# loads params.yaml writes, at exit, the keys it read. Unset (always, outside that test): nothing is written.
TRACE_ENV = "ROBUST_CIFAR_PARAMS_TRACE"


def fix_hint(key: str) -> str:
    return f"edit it in params.yaml or override it with `dvc exp run -S {key}=... dvc.yaml`"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Rule:
    """What a key may hold, in code (`check`) and in words for the error message (`allowed`)."""
    check: Callable[[Any], bool]
    allowed: str
    as_float: bool = False


def real(check: Callable[[float], bool], allowed: str) -> Rule:
    return Rule(lambda v: _number(v) and check(v), allowed, as_float=True)


def whole(check: Callable[[int], bool], allowed: str) -> Rule:
    return Rule(lambda v: _integer(v) and check(v), allowed)


POSITIVE_INT = whole(lambda v: v > 0, "a whole number > 0")


def bounded_int(low: int, high: int, why: str) -> Rule:
    """A whole number in [low, high]; `why` says where the upper bound comes from (it catches typos)."""
    return whole(lambda v: low <= v <= high, f"a whole number from {low} to {high:,} ({why})")


def bounded_real(low: float, high: float, why: str, open_low: bool = False) -> Rule:
    bracket = "(" if open_low else "["
    return real(lambda v: (low < v if open_low else low <= v) and v <= high,
                f"a number in {bracket}{low:g}, {high:g}] ({why})")
NON_NEGATIVE_INT = whole(lambda v: v >= 0, "a whole number >= 0")
# 32 bits: numpy's RandomState, which UMAP and scikit-learn seed from `seeds.umap`, takes no more (one rule for
# every seed; larger ones passed check_params and failed in the umap_plot stage after DVC removed its figure)
SEED = bounded_int(0, 2**32 - 1, "numpy's RandomState takes 32 bits")
POSITIVE = real(lambda v: v > 0, "a number > 0")
NON_NEGATIVE = real(lambda v: v >= 0, "a number >= 0")
PROBABILITY = real(lambda v: 0 <= v <= 1, "a number in [0, 1]")
OPEN_FRACTION = real(lambda v: 0 < v < 1, "a number strictly between 0 and 1")
BELOW_ONE = real(lambda v: 0 <= v < 1, "a number in [0, 1)")
# For a module that reports a key without owning it (the summary's provenance would otherwise need
# ModelConfig, and with it torch): check_params has validated the key with its owner's rule already.
VALIDATED_ELSEWHERE = Rule(lambda v: True, "any value")
BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str), "a string")
MD5 = Rule(lambda v: isinstance(v, str) and (v == "" or re.fullmatch(r"[0-9a-fA-F]{32}", v) is not None),
           'an md5 of 32 hex digits, as `md5sum` prints it, or "" (none: a local data.archive needs its own)')


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: v in choices, " or ".join(choices))


SEEDS = Rule(lambda v: isinstance(v, list) and 0 < len(v) <= 100 and len(set(v)) == len(v)
             and all(SEED.check(seed) for seed in v), "a list of 1 to 100 distinct whole numbers from 0 to 2**32 - 1")
NAME = re.compile(r"[a-z][a-z0-9_]*")
NAMES = Rule(lambda v: isinstance(v, list) and len(v) > 0 and len(set(map(str, v))) == len(v)
             and all(isinstance(n, str) and NAME.fullmatch(n) for n in v),
             "a non-empty list of distinct method names")


class Params:
    """The parsed params.yaml; `value` validates one key and records that it was read."""

    def __init__(self, raw: dict, source: str = "params.yaml", overridden: tuple[str, ...] = (), set_with: str = ""):
        if not isinstance(raw, dict):
            got = "nothing (an empty file)" if raw is None else f"{type(raw).__name__} {str(raw)[:40]!r}"
            raise ParamsError(f"{source} must hold sections of keys (`data:`, `train:` and the rest), but holds {got}: "
                              "fix it, or restore it with `git checkout params.yaml`")
        self.raw = raw
        self.source = source
        self.overridden = overridden   # the keys a tool's -S flags set (with_overrides)
        self.set_with = set_with       # how that tool sets another key, "{key}" its place ("" for params.yaml only)
        self.read: set[str] = set()

    def fix_hint(self, key: str) -> str:
        """How to fix a bad value of `key`: where it came from, the file or a -S flag of the command run."""
        for setting in self.overridden:
            if f"{setting}.".startswith(f"{key}.") or f"{key}.".startswith(f"{setting}."):
                return f"change the `-S {setting}=...` you gave"
        return self.set_with.format(key=key) if self.set_with else fix_hint(key)

    def has(self, key: str) -> bool:
        node: Any = self.raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def value(self, key: str, rule: Rule) -> Any:
        self.read.add(key)
        node: Any = self.raw
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict):   # `model: [4, 128]` where its keys belong
                section = ".".join(parts[:depth])
                raise ParamsError(f"{self.source}: `{section}` = {node!r} is invalid: must be a section of keys "
                                  f"(`{key}` and the rest); {self.fix_hint(section)}")
            if part not in node:
                raise ParamsError(f"{self.source}: `{key}` is missing; add it to params.yaml ({rule.allowed})")
            node = node[part]
        if not rule.check(node):
            raise ParamsError(f"{self.source}: `{key}` = {node!r} is invalid: must be {rule.allowed}; {self.fix_hint(key)}")
        return float(node) if rule.as_float else node

    def seed(self, name: str) -> int:
        return self.value(f"seeds.{name}", SEED)

    def train_seeds(self) -> list[int]:
        """The training seeds: every method is trained once per seed (dvc.yaml's matrix iterates over them)."""
        return list(self.value("seeds.train", SEEDS))

    def method_names(self) -> list[str]:
        """The methods the pipeline trains (dvc.yaml's per-method stages iterate over this list)."""
        return list(self.value("methods", NAMES))

    def leaf_keys(self) -> list[str]:
        return leaf_keys(self.raw)

    def write_trace(self) -> None:
        """Record the keys this process read, for the guard test that compares them with dvc.yaml."""
        directory = os.environ.get(TRACE_ENV)
        if not directory:
            return
        name = "-".join([Path(sys.argv[0]).stem, *sys.argv[1:]]) or "python"
        path = Path(directory) / f"{name}.json"
        earlier = set(json.loads(path.read_text())) if path.is_file() else set()
        path.write_text(json.dumps(sorted(self.read | earlier)))


def get_dotted(tree: dict, key: str) -> Any:
    """The value at a dotted key (`train.lr`) of a nested mapping."""
    for part in key.split("."):
        tree = tree[part]
    return tree


def set_dotted(tree: dict, key: str, value) -> None:
    """Set the value at a dotted key of a nested mapping, in place (its parents must exist)."""
    parent, _, last = key.rpartition(".")
    (get_dotted(tree, parent) if parent else tree)[last] = value


def leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    """Dotted keys of every value that is not a mapping (an empty mapping counts as a leaf)."""
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys += leaf_keys(value, f"{dotted}.") if isinstance(value, dict) and value else [dotted]
    return keys


def parse_yaml(text: str):
    """YAML as DVC reads params.yaml: ruamel.yaml's safe loader made as DVC makes it (dvc.utils.serialize's
    parse_yaml), so YAML 1.2 where PyYAML reads YAML 1.1 (`1e-3` a string, `010` 8, `yes` true), and a
    `%YAML 1.1` line read as DVC reads it (ignored by the C loader; the pure loader would obey it): DVC would
    otherwise record one value and the stages use another."""
    from ruamel.yaml import YAML
    return YAML(typ="safe").load(text)


def write_yaml(tree: dict, path: Path) -> None:
    """`tree` as a params file that parse_yaml (and DVC) reads back as `tree`."""
    from ruamel.yaml import YAML

    writer = YAML(typ="safe", pure=True)
    # block style, no folded lines: libyaml's scanner, which parse_yaml uses as DVC does, misreads a folded
    # URL in a flow mapping
    writer.default_flow_style, writer.width = False, 1 << 16
    with path.open("w") as stream:
        writer.dump(copy.deepcopy(tree), stream)


def _applied(params: Params, settings: list[str]) -> str:
    """params.yaml's text after `dvc exp run -S`'s own code applied `settings` (a DvcException if it refuses one)."""
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        write_yaml(params.raw, path)
        apply_overrides(path, settings)
        return path.read_text()


def refuse_a_sweep(setting: str) -> None:
    """One value per key: Hydra's sweeps (`a,b`, choice, range, interval, glob), which `dvc exp run --queue` expands
    into several experiments, are refused in one line (range, interval and glob reached DVC's writer as objects it
    cannot write: a traceback)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        sweep = OverridesParser.create().parse_overrides([setting])[0].is_sweep_override()
    except HydraException:   # not Hydra's grammar: DVC's own refusal names it
        return
    if sweep:
        key = setting.partition("=")[0]
        raise ParamsError(f"override {setting} is a sweep of several values, where a run takes one value per key: "
                          f"`python -m tools.sweep -S {key}=a,b,c` runs one experiment per value")


# a refusal's fix for a key the -S flags of a tool that takes them did not set (fix_hint's dvc exp run is no help there)
SET_WITH_S = "add `-S {key}=...` to the command (or edit it in params.yaml)"


def with_overrides(params: Params, settings: list[str], set_with: str = "") -> Params:
    """A copy of `params` with `key=value` settings applied by `dvc exp run -S`'s own code (Hydra's
    override grammar: `key=` is an empty string, a key params.yaml lacks is refused), so a tool can
    refuse a bad override before DVC edits params.yaml or deletes anything. `set_with`: how its user sets
    another key (SET_WITH_S for a tool's own -S flags)."""
    from dvc.exceptions import DvcException

    def refused(setting: str) -> bool:
        try:
            _applied(params, [setting])
        except DvcException:
            return True
        return False

    for setting in settings:
        key, equals, _ = setting.partition("=")
        if not equals or not key:
            raise ParamsError(f"override {setting!r} is not key=value: write it as, for example, knn.k=5")
        refuse_a_sweep(setting)
    try:
        text = _applied(params, settings)
    except DvcException as error:
        keys = params.leaf_keys()
        for setting in settings:   # a typo of a key: named, with the key it likely meant, as check_params does
            key = setting.partition("=")[0]
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
            if close and key not in keys:
                raise ParamsError(f"override {setting}: params.yaml has no key `{key}`: did you mean "
                                  f"`{close[0]}`?") from None
            if key not in keys and not any(known.startswith(f"{key}.") for known in keys):
                raise ParamsError(f"override {setting}: params.yaml has no key `{key}`: give one of its keys, "
                                  "dotted from its section (knn.k, train.epochs)") from None
        culprit = next((setting for setting in settings if refused(setting)), " ".join(settings))
        cause = str(error.__cause__).strip().splitlines()[0] if error.__cause__ else str(error)
        raise ParamsError(f"override {culprit}: {cause}; write each as key=value with a key of params.yaml "
                          "(lists as [a, b]; a text holding more than ASCII letters, digits, spaces and . _ - / "
                          "in quotes: key='a text')") from None
    return Params(parse_yaml(text), source=f"{params.source} with its overrides",
                  overridden=tuple(setting.partition("=")[0] for setting in settings), set_with=set_with)


# Each params file this process loaded, with what it read: a stage checks, when it ends, that none changed under it
LOADED: list[tuple[Path, Params]] = []
MISSING = object()


def changed_while_read(loaded: list[tuple[Path, Params]]) -> str | None:
    """The first key one of the `loaded` Params (LOADED, or its tail) read whose file now holds another value
    (`train.lr`: 0.01 -> 0.02), or None.

    DVC records a stage's params from params.yaml after the stage ends: a value edited while it ran would
    be recorded beside outputs computed with the old one (and its run cache would serve them for the new)."""
    for path, params in loaded:
        try:
            now = parse_yaml(path.read_text())
        except (OSError, YAMLError):
            return f"{path} is now unreadable"
        for key in sorted(params.read):
            try:
                value = get_dotted(now, key)
            except (KeyError, TypeError):
                value = MISSING
            if value != get_dotted(params.raw, key):
                return f"`{key}`: {get_dotted(params.raw, key)!r} -> {'gone' if value is MISSING else repr(value)}"
    return None


def shared_node(text: str) -> str | None:
    """Where a YAML text names a node to repeat it (an anchor `&name`, an alias `*name`, a merge `<<: *name`), in
    words; None where it does not (or cannot be parsed: parse_yaml says why). The events of parse_yaml's own
    loader (libyaml's, as DVC's): 1 ms for params.yaml, where PyYAML's pure-Python parser took 17 in every stage."""
    from ruamel.yaml import YAML
    from ruamel.yaml.events import AliasEvent

    try:
        for event in YAML(typ="safe").parse(text):
            if isinstance(event, AliasEvent) or getattr(event, "anchor", None):
                kind = "the alias *" if isinstance(event, AliasEvent) else "the anchor &"
                return f"line {event.start_mark.line + 1} holds {kind}{event.anchor}"
    except YAMLError:
        return None
    return None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run it from the project root, where params.yaml lives")
    text = path.read_text()
    try:
        raw = parse_yaml(text)
    except YAMLError as error:
        problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
        what = (f"{problem}, line {mark.line + 1}" if problem and mark else str(error).strip().splitlines()[0])
        raise ParamsError(f"{path} is not valid YAML ({what}): fix the file, or `git checkout {path}`") from None
    shared = shared_node(text)
    if shared:
        raise ParamsError(f"{path}: {shared}: `dvc exp run -S` cannot edit a value an alias repeats (DVC drops the "
                          "edit, or makes it elsewhere, unsaid): write the values out, without & and *")
    params = Params(raw, source=str(path))
    LOADED.append((path.resolve(), params))
    if os.environ.get(TRACE_ENV):
        atexit.register(params.write_trace)
    return params
