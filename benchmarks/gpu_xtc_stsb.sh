#!/bin/bash
# Issue 14 on a lent GPU machine (the `device` tool): the XTC recipes and the AQ-BERT rows on STS-B
# at their full schedules, several processes side by side on one GPU, each stopped at $DEADLINE s
# (resumable elsewhere only if its checkpoints come back: they don't, they are 260 MB); one
# RUN.tar.gz per run under $OUT (benchmarks/xtc_full.py --bundle). What ran on 2026-11-30:
#
#   here:  mkdir -p .gpu/glue && cp -r ../shared/data/glue/STS-B .gpu/glue/
#          python benchmarks/carry_teacher.py pack runs/stsb-teacher .gpu/stsb-teacher   (+ its eval.json)
#          pip download pydantic, pydantic_core, annotated-types, typing-inspection into .whl (see the
#          device README; the rest is on the machine's image)
#   there: bash benchmarks/gpu_xtc_stsb.sh main          (carry .gpu and .whl; 480 s of training)
#          bash benchmarks/gpu_xtc_stsb.sh diagnostics   (245 s: what makes 1-bit lose)
#   here:  for f in /work/.device/N/*.tar.gz; do tar xzf $f -C runs; done
#          python benchmarks/xtc_full.py --task stsb --teacher runs/stsb-teacher --table-only --prefix runs/gpu-stsb- ...
set -u
MODE=${1:-main}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3; fi
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
$PY -c "import torch, transformers, compactbert; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)" || exit 3
$PY benchmarks/carry_teacher.py unpack .gpu/stsb-teacher /tmp/t/stsb-teacher || exit 3
OUT=${OUT:-/tmp/out}
xtc() {  # NAME [xtc_full arguments...]: runs in /tmp/runs/gpu-stsb-NAME-RECIPE
  local name=$1; shift
  $PY benchmarks/xtc_full.py --task stsb --teacher /tmp/t/stsb-teacher --data .gpu/glue --prefix /tmp/runs/gpu-stsb-$name \
    "$@" ${EXTRA:-} --bundle $OUT --no-table
}
if [ "$MODE" = main ]; then
  D=${DEADLINE:-480}
  START=$(date +%s)
  xtc "" --jobs 5 --recipes xtc-ternary xtc-binary xtc-layer-reduction-binary aq-bert aq-bert-uniform --deadline $D \
    --set-for aq-bert stages.0.epochs=9 --set-for aq-bert stages.1.epochs=9 \
    --set-for aq-bert-uniform stages.0.epochs=9 --set-for aq-bert-uniform stages.1.epochs=9 &
  WAVE1=$!
  # a second seed of the XTC recipes once at most two runs of the first wave are left, if time allows
  sleep 20
  while kill -0 $WAVE1 2>/dev/null && [ "$(pgrep -fc 'compactbert compress')" -gt 2 ]; do sleep 5; done
  LEFT=$(( D - ($(date +%s) - START) ))
  echo "second wave: $LEFT s left"
  if [ $LEFT -gt ${WAVE2_MIN:-200} ]; then
    xtc seed43- --jobs 3 --recipes xtc-ternary xtc-binary xtc-layer-reduction-binary --set seed=43 --deadline $LEFT
  fi
  wait $WAVE1
else
  D=${DEADLINE:-245}
  xtc embfp- --jobs 1 --recipes xtc-binary --set stages.0.methods.0.embeddings=false --deadline $D &
  xtc a32- --jobs 1 --recipes xtc-binary --set stages.0.methods.0.activations=null --deadline $D &
  xtc lr1e4- --jobs 1 --recipes xtc-binary --set stages.0.lr=1.0e-4 --deadline $D &
  xtc embfp- --jobs 1 --recipes xtc-ternary --set stages.0.methods.0.embeddings=false --deadline $D &
  wait
fi
for f in /tmp/runs/*.log; do echo "== $f"; grep -E "^step|Error|error:|Traceback|stopped at" "$f" | tail -3; done
ls -la $OUT
