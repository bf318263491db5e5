#!/usr/bin/env bash
# The LTFN init study, end to end, into the default MLflow store (mlruns/).
# On 2 CPU cores: about 20 min for part 5, 5 min for part 6, 50 min for the grid, and for the seeds
# (seeds 1-4 of the cells the conclusions rest on; seed 0 is the run above) about 30 min for seeds-he,
# 75 min for seeds-part5, 16 min each for seeds-glorot and seeds-normal (2026-12-06, AMD EPYC).
#
#   experiments/ltfn_init/run_study.sh                          # all steps: part5 part6 grid seeds-* report
#   RESUME=last experiments/ltfn_init/run_study.sh grid report  # restart after a kill, from the step it stopped in
#
# RESUME=last continues that step's latest KILLED/FAILED run (a single run from its checkpoint; the grid
# sweep reuses its parent, skips the FINISHED jobs and resumes or re-runs the others). Name only the
# steps that did not finish: a step given RESUME=last with nothing to resume stops with one line, exit 2.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CNNLAB_DATA_DIR="${CNNLAB_DATA_DIR:-$(cd .. && pwd)/shared/datasets}"
resume=()
if [[ -n "${RESUME:-}" ]]; then resume=("resume=${RESUME}"); fi
seeds() { python run.py -m +experiment=ltfn_init_grid "$@" trainer.seed=1,2,3,4 hydra.launcher.n_jobs=2 \
  trainer.verbose=0 "${resume[@]}"; }
steps=("$@")
if [[ ${#steps[@]} -eq 0 ]]; then steps=(part5 part6 grid seeds-he seeds-glorot seeds-normal seeds-part5 report); fi
for step in "${steps[@]}"; do
  case "$step" in
    part5) python run.py +experiment=ltfn5_published trainer.verbose=2 "${resume[@]}" ;;
    part6) python run.py +experiment=ltfn6_published trainer.verbose=2 "${resume[@]}" ;;
    grid) python run.py -m +experiment=ltfn_init_grid hydra.launcher.n_jobs=2 trainer.verbose=0 "${resume[@]}" ;;
    seeds-he) seeds init=he optimizer.lr=1e-3,5e-2 ;;
    seeds-glorot) seeds init=glorot optimizer.lr=5e-2 ;;
    seeds-normal) seeds init=normal optimizer.lr=1e-7 ;;
    seeds-part5) python run.py -m +experiment=ltfn5_published trainer.seed=1,2,3,4 hydra.launcher.n_jobs=2 \
        trainer.verbose=0 "${resume[@]}" ;;
    report) python experiments/ltfn_init/study_report.py --out experiments/ltfn_init ;;
    *) echo "error: unknown step '$step' (part5 part6 grid seeds-he seeds-glorot seeds-normal seeds-part5 report)" >&2; exit 2 ;;
  esac
done
