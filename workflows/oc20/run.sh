#!/usr/bin/env bash
# The small OC20 job on CPU: generate EMT adsorbate relaxations in the OC20 formats, train a small
# EquiformerV2 on the S2EF frames, score it with the OC20 S2EF metrics, then run IS2RE/IS2RS by
# relaxing the initial structures with the trained model (~10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
data="${DATA:-data/oc20_emt}"
run="${1:-runs/oc20_emt_small_$(date +%Y%m%d-%H%M%S)}"
# Training systems (seed 0) and held-out test systems (seed 1) from the same distribution.
for split in train test; do
  seed=$([ "$split" = train ] && echo 0 || echo 1)
  systems=$([ "$split" = train ] && echo 40 || echo 10)
  if [ ! -d "$data/$split/s2ef" ]; then
    sciml data generate oc20 --systems "$systems" --seed "$seed" --metals Cu Pt Ag --adsorbates H O OH CO \
      --size 2 2 3 --max-steps 30 --output "$data/$split"
  fi
done
sciml train workflows/oc20/s2ef_emt_small.yaml --set data.path="$data/train/s2ef" --output-dir "$run"
sciml eval --task s2ef --checkpoint "$run/best.pt" "$data/test/s2ef"
sciml eval --task is2re --checkpoint "$run/best.pt" "$data/test/is2re.lmdb" --optimizer lbfgs --fmax 0.05 --steps 200
