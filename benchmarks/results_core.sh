#!/usr/bin/env bash
# The committed results on the embedded model, one run after another (never two heavy runs at
# once on 2 cores: torch threads stall each other). Each bench line resumes with --resume.
# GRACE and GRACE+Norm were run with the teacher-forced scorer only (session time); drop
# `--scorers tf` to add the generation scorer.
set -euo pipefail
H=${HOREN:-.venv/bin/horen}
bench() { $H bench --dataset zsre --n 1000 --checkpoints 1,10,100,1000 --threads 2 --out results --no-progress "$@"; }
bench --method horen
$H bench-speed --n 200 --threads 2 --out results
bench --method grace --scorers tf
bench --method grace-norm --scorers tf
$H report results/*__sequential.json --out results/report --readme README.md
