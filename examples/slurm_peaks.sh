#!/bin/bash
# One-shot layer-parallel training of Peaks on 8 ranks, one core each.
# Submit from the repository root after `make setup`:  sbatch examples/slurm_peaks.sh
#SBATCH --job-name=mgrit-peaks
#SBATCH --ntasks=8
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --output=runs/%x-%j.out

set -euo pipefail
export OMP_NUM_THREADS=1    # one torch thread per rank
mkdir -p runs
# With a cluster MPI, build mpi4py against it (pip install --no-binary mpi4py mpi4py) and use srun;
# with the virtualenv's own MPICH, use its mpiexec.
if command -v srun >/dev/null && [ -z "${USE_VENV_MPIEXEC:-}" ]; then
    LAUNCH=(srun)
else
    LAUNCH=(.venv/bin/mpiexec -n "${SLURM_NTASKS:-8}")
fi
"${LAUNCH[@]}" .venv/bin/mgrit-resnet train examples/peaks.toml \
    --set network.depth=256 --set mgrit.levels=3 --set mgrit.coarsening=4 \
    --out "runs/peaks-${SLURM_JOB_ID:-local}"
# Continue a run that hit the time limit:  add --resume (any rank count works).
