#!/usr/bin/env bash
# Fine-tuning workflow (README.md): pre-train EGNN on 800 EMT-labelled Cu-Ag alloys, fine-tune it on
# 150 EAM-labelled frames of the same systems, train the same model from scratch on those frames,
# and print both runs' errors on the same 100 EAM test frames (about 5 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
here=workflows/finetune
runs=runs/finetune
if [ -e "$runs/pretrain" ] || [ -e "$runs/finetuned" ] || [ -e "$runs/scratch" ]; then
  echo "$runs holds runs already: move it away first" >&2; exit 1
fi
python "$here/make_data.py" "$runs/data" 800 300
sciml train "$here/pretrain.yaml"
sciml train "$here/finetune.yaml"        # init_from: runs/finetune/pretrain/best.pt
sciml train "$here/scratch.yaml"
sciml info "$runs/finetuned/best.pt"
python "$here/table.py" "$runs"
