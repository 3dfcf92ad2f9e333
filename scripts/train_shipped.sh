#!/usr/bin/env bash
# Train every shipped model at the paper's settings, all at once on one machine, each stopping
# at the paper's iteration count or after LIMIT seconds, whichever comes first. The manifests
# record the exact steps reached and each model's command line.
#
#   DATA=../shared/data/photos STYLES=../shared/data/styles LIMIT=0 scripts/train_shipped.sh
set -u
PY=${PY:-python3}
DATA=${DATA:-../shared/data/photos}
STYLES=${STYLES:-../shared/data/styles}
STORE=${STORE:-model_store}
RUNS=${RUNS:-runs}
LIMIT=${LIMIT:-0}
LOGS=${LOGS:-$RUNS/logs}
EXTRA=${EXTRA:-}          # e.g. "--vgg-weights vgg19_fp16.safetensors --save-dtype float32"
CONTINUE=${CONTINUE:-0}   # 1: each model starts from the weights already in $STORE
WITH_SR=${WITH_SR:-1}     # 0: style models only
mkdir -p "$LOGS"

# style: name, style weight (lambda_s; content weight 1), TV weight. The weights the shipped
# networks were trained with, tuned per painting by eye; `--style-weight auto` (the default of
# `python -m train style`, train/style_weight.py) gives each of them within 21% of these
# (docs/style_weight.md). A new painting: put `auto` in the second column.
STYLE_TABLE=${STYLE_TABLE:-"udnie 2e-5 1e-2
candy 2.5e-6 1e-2
mosaic 3.5e-6 1e-2
rain_princess 2e-6 1e-2
starry_night 5e-6 1e-2
the_wave 2e-5 1e-2"}

init() { [ "$CONTINUE" = 1 ] && echo "--init-from $1"; }

pids=()
while read -r name sw tv; do
  [ -z "$name" ] && continue
  $PY -m train style --style-image "$STYLES/$name.jpg" --name "$name" --data "$DATA" \
    --store "$STORE" --checkpoint-dir "$RUNS" --norm instance --upsample resize_conv \
    --padding reflect --style-weight "$sw" --tv-weight "$tv" --time-limit-s "$LIMIT" \
    --checkpoint-every 2000 $(init "$name") $EXTRA > "$LOGS/$name.log" 2>&1 &
  pids+=($!)
done <<< "$STYLE_TABLE"

# super-resolution: the paper's 288 patches, batch 4, Adam 1e-3 (200k iterations in the paper)
sr() {
  $PY -m train superres --name "$1" --factor "$2" --loss "$3" --tv-weight "$4" --data "$DATA" \
    --store "$STORE" --checkpoint-dir "$RUNS" --norm none --upsample resize_conv \
    --padding reflect --residual --iterations 200000 --time-limit-s "$LIMIT" \
    --checkpoint-every 5000 $(init "$1") $EXTRA > "$LOGS/$1.log" 2>&1 &
  pids+=($!)
}
if [ "$WITH_SR" = 1 ]; then
  sr sr_x4 4 feat 1e-2
  sr sr_x8 8 feat 1e-2
  sr sr_x4_pixel 4 pixel 0
fi

status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
