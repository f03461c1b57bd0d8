#!/usr/bin/env bash
# Downloads the wheels pinned in .device/wheels.txt into .whl/ (for the GPU machine: Python 3.12, x86_64 Linux,
# no internet). Run from the repo root: bash .device/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
list=.device/wheels.txt
grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
mkdir -p .whl

ANTLR=antlr4-python3-runtime
pins=() antlr=""
while read -r line; do
  line="${line%%#*}"; line="${line//[[:space:]]/}"
  [[ -z $line ]] && continue
  if [[ ${line%%==*} == "$ANTLR" ]]; then antlr=$line; else pins+=("$line"); fi
done < "$list"

# --no-deps: wheels.txt already names every package needed that the GPU machine lacks.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}" \
  2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)

# antlr4-python3-runtime 4.9.3 has only an sdist on PyPI: build its pure-python wheel here.
if [[ -n $antlr ]] && ! ls .whl/antlr4_python3_runtime-"${antlr#*==}"-*.whl >/dev/null 2>&1; then
  python3 -m pip wheel -q --no-deps "$antlr" -w .whl 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
fi

# One wheel per package, and exactly the pinned ones: two versions of a package stop the install there.
python3 - "$list" <<'PY'
import os, re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
want = {}
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, version = line.split("==")
        want[norm(name)] = version
have = {}
for f in os.listdir(".whl"):
    if f.endswith(".whl"):
        name, version = f.split("-")[:2]
        have.setdefault(norm(name), []).append(version)
bad = [f"{n}: {v}" for n, v in sorted(have.items()) if len(v) > 1 or n not in want or v[0] != want[n]]
missing = sorted(set(want) - set(have))
if bad or missing:
    sys.exit(f"fetch_wheels: .whl does not match {sys.argv[1]}: unexpected {bad}, missing {missing}")
PY

echo "$(ls .whl/*.whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl"
