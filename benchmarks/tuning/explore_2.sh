#!/bin/bash
# GPU exploration 2: a from-scratch MobileNet-0.25 recipe that learns; held-out TRAIN classes only.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devdata/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TORCH_HOME=/tmp/th
mkdir -p /tmp/th/hub/checkpoints /tmp/logs && cp .devdata/efficientnet-lite2-9656183e.pth /tmp/th/hub/checkpoints/
R=/tmp/runs
C="output_dir=$R data.root=$PWD/.devdata/cub100_train data.validation_classes=14 device=cuda threads=0 data.num_workers=2 eval.batch_size=256"
E="python3 -m embdistill"
$E train -c configs/cub100/teacher.yaml --no-progress $C name=teacher model.backbone=efficientnet_lite2 train.epochs=1 eval.initial=false data.num_workers=8 > /tmp/logs/teacher.log 2>&1
T="distill.teacher=$R/teacher/last.pt distill.cache_views=4"
M="-c configs/cub100/mobilenet025.yaml --no-progress $C eval.every_epochs=3 train.epochs=15"
REL='distill.terms=[{name: relative, weight: 10.0, args: {reduction: mean}}]'
run() { n=$1; shift; $E "$@" name=$n > /tmp/logs/$n.log 2>&1 & }
run b_lr1e3 train $M train.lr=1e-3
run b_lr3e4 train $M train.lr=3e-4
run b_lr1e3_p8k4 train $M train.lr=1e-3 train.classes_per_batch=8 train.images_per_class=4
run r10_lr1e3 distill $M $T train.lr=1e-3 "$REL"
run r10_lr3e4 distill $M $T train.lr=3e-4 "$REL"
run a10_lr1e3 distill $M $T train.lr=1e-3 'distill.terms=[{name: absolute, weight: 10.0}]'
run r100_lr1e3 distill $M $T train.lr=1e-3 'distill.terms=[{name: relative, weight: 100.0, args: {reduction: mean}}]'
run b_lr1e3_m01 train $M train.lr=1e-3 train.metric_loss_args.margin=0.1
wait
for d in $R/*/; do n=$(basename $d); python3 -c "
import json,sys
for l in open('$d/metrics.jsonl'):
    r=json.loads(l)
    if r.get('kind')=='eval': print('$n', r['epoch'], round(100*r['recall@1'],1), round(100*r['map@r'],1))
"; done
tail -n 2 /tmp/logs/*.log | grep -v Warn | grep -i error | sort | uniq -c
