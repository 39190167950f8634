#!/usr/bin/env bash
# Every command that runs a model, once, on a GPU: the embedded mini-world CLIP on a tiny mini-world.
# The test suite runs on the CPU only; run this wherever a CUDA device is at hand.
#
#   bash scripts/gpu_smoke.sh [CLIP_ART_ROOT] [OUT]    # TTD="python -m ttd" when not installed; DEVICE=cuda:1
#
# It stops at the first command that fails and prints the one that did.
set -euo pipefail
SOURCE=${1:-/usr/share/openclipart/png}
OUT=${2:-/tmp/ttd-gpu-smoke}
TTD=${TTD:-ttd}
DEVICE=${DEVICE:-cuda}
A=$(dirname "$0")/../src/ttd/assets/miniworld
W=$OUT/world
trap 'echo "FAILED: $BASH_COMMAND" >&2' ERR
rm -rf "$OUT" && mkdir -p "$OUT"

$TTD data miniworld --out "$W" --source "$SOURCE" --train 1024 --val 64 --test 64 --workers 8 --quiet
IMAGE=$(head -1 "$W/val/tags.jsonl" | python3 -c "import json, sys; print(json.load(sys.stdin)['image'])")
$TTD tags "$W/val/$IMAGE" "a cat and a dog on the grass" --model miniworld --device "$DEVICE"
$TTD segment "$W/val/$IMAGE" --text "a cat" --model miniworld --device "$DEVICE" --out "$OUT/segment.png"
$TTD train --model miniworld --data "$W/train/pairs.jsonl" --out "$OUT/ttd" --steps 20 --batch-size 32 --workers 2 \
    --device "$DEVICE" --quiet
$TTD eval tags --data "$W/val/tags.jsonl" --model miniworld --adapter "$OUT/ttd/adapter.safetensors" --device "$DEVICE" \
    --out "$OUT/tags" --quiet
$TTD eval caption --data "$W/val/tags.jsonl" --model miniworld --adapter "$OUT/ttd/adapter.safetensors" --device "$DEVICE" \
    --out "$OUT/caption" --quiet
$TTD eval seg --dataset generic --root "$W/seg/val" --model miniworld --device "$DEVICE" --out "$OUT/seg" --quiet
$TTD pretrain --config "$A/pretrain.yaml" --clip-config "$A/clip-config.yaml" --data "$W/train/shards" --out "$OUT/pretrain" \
    --steps 10 --warmup-steps 2 --save-every 5 --workers 2 --device "$DEVICE" --quiet
$TTD pretrain --config "$A/pretrain-infonce.yaml" --clip-config "$A/clip-config-infonce.yaml" --data "$W/train/shards" \
    --out "$OUT/pretrain-infonce" --steps 10 --warmup-steps 2 --save-every 5 --workers 2 --device "$DEVICE" --quiet
echo "all commands ran on $DEVICE"
