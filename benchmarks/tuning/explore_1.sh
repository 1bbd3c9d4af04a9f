#!/bin/bash
# GPU exploration: learning dynamics on held-out TRAIN classes (validation_classes=14), never the test classes.
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devdata/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TORCH_HOME=/tmp/th
mkdir -p /tmp/th/hub/checkpoints && cp .devdata/efficientnet-lite2-9656183e.pth /tmp/th/hub/checkpoints/
nvidia-smi -L; python3 -c "import torch, timm; print(torch.__version__, timm.__version__)"
R=/tmp/runs; mkdir -p /tmp/logs
C="output_dir=$R data.root=$PWD/.devdata/cub100_train data.validation_classes=14 device=cuda threads=0 data.num_workers=6 eval.batch_size=256"
E="python3 -m embdistill"
$E train -c configs/cub100/teacher.yaml --no-progress $C name=teacher model.backbone=efficientnet_lite2 train.epochs=3 eval.every_epochs=1 > /tmp/logs/teacher.log 2>&1
T="distill.teacher=$R/teacher/last.pt distill.cache_views=4"
M="-c configs/cub100/mobilenet025.yaml --no-progress $C eval.every_epochs=3"
run() { n=$1; shift; $E "$@" name=$n > /tmp/logs/$n.log 2>&1 & }
run m_base12 train $M train.epochs=12
run m_rel1_12 distill $M $T train.epochs=12 'distill.terms=[{name: relative, weight: 1.0, args: {reduction: mean}}]'
wait
run m_rel10_12 distill $M $T train.epochs=12 'distill.terms=[{name: relative, weight: 10.0, args: {reduction: mean}}]'
run m_abs1_12 distill $M $T train.epochs=12 'distill.terms=[{name: absolute, weight: 1.0}]'
wait
run m_base30 train $M train.epochs=30
run m_rel10_30 distill $M $T train.epochs=30 'distill.terms=[{name: relative, weight: 10.0, args: {reduction: mean}}]'
wait
grep -H "done in\|epoch .*: recall\|before training" /tmp/logs/*.log
for d in $R/*/; do n=$(basename $d); cp $d/metrics.jsonl /tmp/logs/$n.jsonl 2>/dev/null; done
tail -n 4 /tmp/logs/*.log | grep -v Warn
tar czf $OUT/explore.tgz -C /tmp logs
