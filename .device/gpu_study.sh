#!/usr/bin/env bash
# One device call (one H100/H200, 10 minutes at most) that checks, measures and runs the study:
#   1. the CUDA-graph training step on the GPU (tests/test_step_graphs*.py); if they fail, the study
#      below trains eagerly (-S compute.cuda_graphs=false) rather than not at all. Meanwhile, on the
#      CPU, a UMAP fit warms the numba cache the umap stages read;
#   2. the benchmark: each method's training img/s (graphed and eager), evaluation, FGM, 3-NN, MFU;
#   3. the default study through dvc on the real JPEG images, JOBS stages at a time
#      (python -m tools.concurrent_repro): one seed, then seeds 1 and 2 added.
# Everything it reports lands in $OUT (at most 8 files come back): gpu.txt, tests.txt, bench.txt,
# times.txt, study.log.gz, results-one-seed.tar.gz and results.tar.gz (reports, per-stage wall times
# and logs, dvc.lock, params.yaml).
#
# Before the call, in the repository root here (see .device/README.md):
#   .device/fetch_wheels.sh                      # dvc, dvclive, umap-learn and what they need -> .whl/
#   cp ../shared/data/cifar10-jpeg.tar.gz .device/
# The call:  run(command=".device/gpu_study.sh", carry=[".whl", ".device/cifar10-jpeg.tar.gz"], timeout_s=600)
#
# Knobs (for a dry run on a CPU): BUDGET_S (seconds this script may take, default 575), ARCHIVE,
# ARCHIVE_MD5, STUDY_SETTINGS (extra `-S key=value` words, no spaces inside one), SEEDS_FIRST, SEEDS_ALL,
# BENCH_ARGS, JOBS (stages at a time, default 4), ATTACK_SETTINGS (the robustness stage's attacks,
# below).
#
# Robust accuracy in this call: every registered attack at the study's eps on 1,000 test images (true
# labels, fp32, cumulative), the soft k-NN surrogates at one temperature; the rest of the eps sweep with
# FGM and PGD only, and targeted APGD not at all: params.yaml's defaults (every attack at every eps) would
# cost about 3 minutes per model on an H200 (an estimate from its measured FGM speed), too much for one call.
set -uo pipefail
BUDGET_S=${BUDGET_S:-575}
DEADLINE=$((SECONDS + BUDGET_S))
left() { echo $((DEADLINE - SECONDS)); }
OUT=${OUT:?the device tool sets OUT}
ARCHIVE=${ARCHIVE:-.device/cifar10-jpeg.tar.gz}
ARCHIVE_MD5=${ARCHIVE_MD5-26db66ca8cac19aed87bc28f0e6c6d82}   # set but empty: not checked
SEEDS_FIRST=${SEEDS_FIRST:-[0]}
SEEDS_ALL=${SEEDS_ALL:-[0, 1, 2]}
JOBS=${JOBS:-4}
ATTACK_SETTINGS=${ATTACK_SETTINGS-"-S attack.test_images=1000 -S attack.eps_255=[0,2,4,6.375,8,16,32] -S attack.apgd_ce.at=study -S attack.apgd_dlr.at=study -S attack.apgd_t.at=never -S attack.soft_knn_pgd.at=study -S attack.soft_knn_apgd_ce.at=study -S attack.soft_knn_apgd_dlr.at=study -S attack.guide_samples.at=study -S attack.soft_knn_pgd.temperatures=[0.03] -S attack.soft_knn_apgd_ce.temperatures=[0.03] -S attack.soft_knn_apgd_dlr.temperatures=[0.03]"}
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
fi
# dvc.yaml's commands say `python`; the device has `python3`
# (a wrapper, not a symlink: python3 there is a venv's, found through the path it is called by; written
# beside and renamed, never through an existing /tmp/bin/python, which may be a link to a real interpreter)
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/bin/python.$$ \
  && chmod +x /tmp/bin/python.$$ && mv -f /tmp/bin/python.$$ /tmp/bin/python && export PATH=/tmp/bin:$PATH
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi";
  python -c "import torch, numpy, platform, dvc, umap; print('torch', torch.__version__, 'numpy', numpy.__version__, 'python', platform.python_version(), 'dvc', dvc.__version__, 'umap', umap.__version__)"; } \
  2>&1 | tee "$OUT/gpu.txt"

# UMAP's numba functions compile once per machine (~30 s) into .cache/numba: warm that cache on the
# CPU while the GPU tests run (it would otherwise land on the one-seed study's critical path)
# (one fit and transform of clustered 128-d points: over 4,096 of them, so that UMAP takes the
# NN-descent path of the stages' 10,000, and few enough that the fit itself is quick)
WARM_UMAP='
import numpy as np
from robust_cifar.reporting.umap_plot import fit_umap
rng = np.random.default_rng(0)
points = (rng.normal(size=(10, 128))[np.arange(5_000) % 10] + rng.normal(scale=0.5, size=(5_000, 128))).astype(np.float32)
fit_umap(points, 15, 0.1, seed=0).transform(points[:500])'
( started=$SECONDS; timeout 150 python -c "$WARM_UMAP" > /tmp/umap_warm.log 2>&1
  echo "umap numba cache warmed: exit $?, $((SECONDS - started)) s" > /tmp/umap_warm.txt ) &
WARMING=$!

echo "== 1. CUDA graph tests ($(left) s left)"
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_step_graphs_cuda.py tests/test_step_graphs.py \
  > /tmp/tests.log 2>&1
TESTS_RC=$?
tail -30 /tmp/tests.log | tee "$OUT/tests.txt"
read -r -a EXTRA <<< "${ATTACK_SETTINGS} ${STUDY_SETTINGS:-}"
NO_GRAPHS=()
if [ "$TESTS_RC" -ne 0 ]; then   # a wrong or failing graph must not cost the study: train eagerly
  echo "graph tests exit $TESTS_RC: the bench and the study run without CUDA graphs" | tee -a "$OUT/tests.txt"
  EXTRA+=(-S compute.cuda_graphs=false)
  NO_GRAPHS=(--no-graphs)
fi

wait "$WARMING"   # before the bench: its numbers must not share the CPU
tee -a "$OUT/tests.txt" < /tmp/umap_warm.txt

echo "== 2. benchmark ($(left) s left)"
timeout 150 python -m tools.bench ${BENCH_ARGS:---seconds 2 --skip reference umap} "${NO_GRAPHS[@]}" 2>&1 \
  | tee "$OUT/bench.txt"

echo "== 3. the study through dvc ($(left) s left)"
if [ ! -d .git ]; then   # the device gets the working tree without its history: dvc needs a git repository
  git init -q && git add -A && git -c user.email=device@localhost -c user.name=device commit -qm "working tree" \
    || { echo "git snapshot failed"; exit 1; }
fi
DATA=(-S "data.archive=$ARCHIVE" -S "data.archive_md5=$ARCHIVE_MD5")
: > "$OUT/times.txt"
run_study() {   # name, seeds: the pipeline through dvc, JOBS stages at a time, timed, bounded by the budget
  local started=$SECONDS limit=$(( $(left) - 30 ))   # SIGINT at the limit, KILL 20 s later, then ~10 s to pack
  [ "$limit" -gt 30 ] || { echo "$1: skipped, $(left) s left" | tee -a "$OUT/times.txt"; return 1; }
  echo "== $1" >> "$OUT/study.log"
  # SIGINT first: each running stage stops with its one line and keeps what it finished
  timeout -s INT -k 20 "$limit" python -m tools.concurrent_repro --jobs "$JOBS" -S "seeds.train=$2" \
    "${DATA[@]}" "${EXTRA[@]}" >> "$OUT/study.log" 2>&1
  local rc=$?
  echo "$1 (seeds.train=$2, $JOBS stages at a time): exit $rc, $((SECONDS - started)) s wall" | tee -a "$OUT/times.txt"
  return $rc
}
pack() {   # what the study produced so far -> $1 (globs expanded now, not when defined)
  tar czf "$1" --ignore-failed-read params.yaml dvc.lock .cache/timing .cache/concurrent reports/summary.md \
    reports/summary.json reports/*.png reports/metrics reports/umap reports/training reports/robustness 2>/dev/null
}
if run_study gpu-one-seed "$SEEDS_FIRST"; then
  # kept apart: the three-seed run rewrites these, and may not finish
  pack "$OUT/results-one-seed.tar.gz"
  run_study gpu-three-seeds "$SEEDS_ALL"
fi
python -m dvc status 2>&1 | grep -c "changed" | sed 's/^/stages not yet run or changed: /' | tee -a "$OUT/times.txt"

gzip -c "$OUT/study.log" > "$OUT/study.log.gz" && rm "$OUT/study.log"
pack "$OUT/results.tar.gz"
ls -la "$OUT"
echo "done, $(left) s of the budget left"
