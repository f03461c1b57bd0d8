"""Rewrite the code deps of every stage in dvc.yaml to its command's import closure.

    python -m tools.sync_code_deps          # rewrite dvc.yaml in place
    python -m tools.sync_code_deps --check  # exit 1 and name the stages that would change

Only the `.py` entries of each stage's `deps` change; data deps, params, outs, comments and
the order of everything else stay as written. tests/test_guards.py fails until this has run
after a module gains or loses an import.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from tools.import_closure import import_closure

ROOT = Path(__file__).resolve().parent.parent
STAGE = re.compile(r"^  (\w+):")                  # a stage's name, two spaces in under `stages:`
DEPS = re.compile(r"^( +)deps:\s*$")               # under the stage, or under its foreach's `do:`
ITEM = re.compile(r"^( +)- (\S+)(?:\s+#.*)?\s*$")   # a comment may follow
COMMAND = re.compile(r"python -m (\S+)")


def closures(dvc_yaml: dict, root: Path) -> dict[str, list[str]]:
    """The sorted import closure of each stage's command module, by stage name."""
    def command(stage: dict) -> str:
        return stage["cmd"] if "cmd" in stage else stage["do"]["cmd"]
    return {name: sorted(str(path) for path in import_closure(root, COMMAND.match(command(stage)).group(1)))
            for name, stage in dvc_yaml["stages"].items()}


def synced(text: str, wanted: dict[str, list[str]]) -> tuple[str, list[str]]:
    """`text` with each stage's .py deps replaced by `wanted[stage]` where the first one stood."""
    out, changed = [], []
    stage, item_indent, existing, inserted = None, None, [], False
    for line in text.splitlines(keepends=True) + [""]:
        item = ITEM.match(line)
        if item_indent is not None and not (item and item.group(1) == item_indent):
            item_indent = None   # the end of a deps list
            if sorted(existing) != wanted[stage]:
                changed.append(stage)
        if STAGE.match(line):
            stage = STAGE.match(line).group(1)
        deps = DEPS.match(line)
        if deps and stage in wanted:
            item_indent, existing, inserted = deps.group(1) + "  ", [], False
        elif item_indent is not None and item.group(2).endswith(".py"):
            existing.append(item.group(2))
            if not inserted:   # the closure goes where the first code dep was
                out += [f"{item_indent}- {path}\n" for path in wanted[stage]]
                inserted = True
            continue
        out.append(line)
    return "".join(out), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if dvc.yaml is out of date")
    args = parser.parse_args(argv)
    path = ROOT / "dvc.yaml"
    text = path.read_text()
    new_text, changed = synced(text, closures(yaml.safe_load(text), ROOT))
    if changed and not args.check:
        path.write_text(new_text)
    print(f"{'out of date' if args.check else 'rewrote'}: {', '.join(changed)}" if changed else "dvc.yaml is in sync")
    return 1 if changed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
