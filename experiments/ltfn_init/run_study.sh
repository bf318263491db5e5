#!/usr/bin/env bash
# The LTFN init study, end to end, into the default MLflow store (mlruns/).
# On 2 CPU cores: about 20 min for part 5, 5 min for part 6, 50 min for the grid.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CNNLAB_DATA_DIR="${CNNLAB_DATA_DIR:-$(cd .. && pwd)/shared/datasets}"
python run.py +experiment=ltfn5_published trainer.verbose=2
python run.py +experiment=ltfn6_published trainer.verbose=2
python run.py -m +experiment=ltfn_init_grid hydra.launcher.n_jobs=2 trainer.verbose=0
python -m cnnlab.report
