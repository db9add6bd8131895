#!/usr/bin/env bash
# The README's main job: train EGNN on the shipped ethanol set (RUN/train.log), print the test table,
# save parity and learning-curve plots, then run NVE MD with the trained calculator, streaming the
# trajectory and its log into the run folder, plot it and print the energy drift (3-4 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
run="${1:-runs/ethanol_egnn_$(date +%Y%m%d-%H%M%S)}"
data=datasets/ethanol_xtb_500K/ethanol_xtb_500K.extxyz
sciml train workflows/ethanol/egnn.yaml --output-dir "$run"
sciml plot parity "$run"
sciml plot curves "$run"
sciml md "$run/best.pt" "$data" --ensemble nve --steps 400 --timestep 0.25 --temperature 300 \
  --interval 10 --output "$run/md.extxyz"          # and $run/md.log
sciml plot md "$run/md.log" --output "$run/md.png"
