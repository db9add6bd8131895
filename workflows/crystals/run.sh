#!/usr/bin/env bash
# The small crystal job on CPU (about 20 minutes on 2 cores, 6 of them generating data):
#  1. EMT-relaxed random alloy crystals (chiral ones with their mirror images) in the JARVIS and
#     MatBench formats, plus perturbed copies with energies, forces and stresses;
#  2. iComFormer on formation energies through the JARVIS reader with the ALIGNN split;
#  3. a property table for CIF files (a broken one is listed and skipped);
#  4. the MatBench protocol on the same crystals: five folds, mean +- std of the fold MAEs;
#  5. an energy-trained iComFormer relaxing a crystal's positions and cell (FrechetCellFilter).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
data="${DATA:-data/crystals_emt}"
run="${1:-runs/crystals_emt_$(date +%Y%m%d-%H%M%S)}"
if [ ! -f "$data/perturbed.extxyz" ]; then
  sciml data generate crystals --num 400 --seed 0 --max-atoms 8 --perturbed 4 --output "$data"
fi
sciml train workflows/crystals/emt_small.yaml --set data.path="$data/dft_3d.json" --output-dir "$run/jarvis"

mkdir -p "$run/cifs"
cp $(ls "$data"/cifs/*.cif | head -5) "$run/cifs/"
printf 'data_broken\n_cell_length_a 3.6\n' > "$run/cifs/broken.cif"   # no lattice angles, no atoms
sciml predict --checkpoint "$run/jarvis/best.pt" "$run"/cifs/*.cif

python workflows/crystals/matbench.py workflows/crystals/emt_small.yaml \
  --set data.path="$data/matbench_formation_energy_peratom.json.gz" --set data.format=matbench \
  --set epochs=20 --set output_dir="$run/matbench"

sciml train workflows/crystals/emt_energy_small.yaml --set data.path="$data/perturbed.extxyz" --output-dir "$run/energy"
sciml relax "$run/energy/best.pt" "$(ls "$data"/cifs/*.cif | head -1)" --cell --fmax 0.05 --output "$run/relaxed.extxyz"
