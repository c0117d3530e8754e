#!/usr/bin/env bash
# The committed results of the codebook editors on the embedded model (issue 4), one after
# another (never two heavy runs at once on 2 cores). Each line is resumable with --resume.
set -euo pipefail
H=${HOREN:-.venv/bin/horen}
for method in horen grace-norm grace; do
  $H bench --method "$method" --dataset zsre --n 1000 --checkpoints 1,10,100,1000 --threads 2 --out results --no-progress
done
