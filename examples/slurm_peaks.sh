#!/bin/bash
# One-shot layer-parallel training of Peaks on 8 ranks, one core each.
#
# Submit from the repository root after `make setup`:
#     sbatch examples/slurm_peaks.sh [--set KEY=VALUE ...]
# Slurm opens the log before the script runs and creates no folder for it, so
# the log goes to the submit directory: slurm-mgrit-peaks-<job id>.out.
#
# Resumable: the run goes to runs/peaks-slurm (not to a folder per job id).
# Submitted again (after hitting the time limit, say), the script finds its
# checkpoint and adds --resume; any number of ranks can resume it. A folder
# without a checkpoint (a job killed before its first epoch ended) is started over (--force).
#
# Settings (environment variables; arguments after the script go to `train`):
#   CONFIG    the config file (default examples/peaks.toml)
#   OUT       the run folder (default runs/peaks-slurm)
#   LAUNCHER  mpiexec (default): the virtualenv's own mpiexec, from the MPICH
#             wheel that `make setup` installs; runs the ranks on the first node.
#             srun: the cluster's MPI, across nodes. It needs mpi4py built
#             against that MPI, e.g. with the cluster's module loaded:
#                 .venv/bin/pip install --force-reinstall --no-binary mpi4py mpi4py
#   VENV      the virtualenv (default .venv); MPIEXEC its mpiexec (default $VENV/bin/mpiexec)
# A launcher and an mpi4py that do not match start N separate one-rank runs;
# the script checks for that first and stops with a message.
#
#SBATCH --job-name=mgrit-peaks
#SBATCH --ntasks=8
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
export OMP_NUM_THREADS=1    # one torch thread per rank

NTASKS="${SLURM_NTASKS:-8}"
CONFIG="${CONFIG:-examples/peaks.toml}"
OUT="${OUT:-runs/peaks-slurm}"
LAUNCHER="${LAUNCHER:-mpiexec}"
VENV="${VENV:-.venv}"
MPIEXEC="${MPIEXEC:-$VENV/bin/mpiexec}"
say() { echo "slurm_peaks.sh: $*" >&2; }

case "$LAUNCHER" in
    mpiexec) LAUNCH=("$MPIEXEC" -n "$NTASKS") ;;
    srun) LAUNCH=(srun) ;;
    *) say "LAUNCHER must be mpiexec or srun; got '$LAUNCHER'"; exit 2 ;;
esac
mkdir -p "$(dirname "$OUT")"

# Every rank of a mismatched launcher and mpi4py is rank 0 of 1: `info` then prints "ranks 1" once per process.
RANKS=$("${LAUNCH[@]}" "$VENV/bin/mgrit-resnet" -q info | awk '$1 == "ranks" { print $2 }' | sort -u | tr '\n' ' ' | sed 's/ $//')
if [ "$RANKS" != "$NTASKS" ]; then
    say "$LAUNCHER started $NTASKS processes, but mgrit-resnet saw 'ranks ${RANKS:-?}' in them:"
    say "mpi4py does not use the MPI of the launcher. Use LAUNCHER=mpiexec (the virtualenv's MPICH), or build"
    say "mpi4py against the cluster's MPI for LAUNCHER=srun (see the header of this script)."
    exit 2
fi

RESUME=()
NOTE=""
if [ -f "$OUT/checkpoint.pt" ]; then
    RESUME=(--resume); NOTE=" (resuming)"
elif [ -d "$OUT" ]; then
    RESUME=(--force); NOTE=" (starting over: no checkpoint)"    # a job killed before its first checkpoint
fi
say "job ${SLURM_JOB_ID:-local}: $NTASKS ranks via $LAUNCHER, $CONFIG -> $OUT$NOTE"
"${LAUNCH[@]}" "$VENV/bin/mgrit-resnet" train "$CONFIG" \
    --set network.depth=256 --set mgrit.levels=3 --set mgrit.coarsening=4 "$@" \
    --out "$OUT" ${RESUME[@]+"${RESUME[@]}"}
