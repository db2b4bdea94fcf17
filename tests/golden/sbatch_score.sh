#!/bin/bash

# Parameters
#SBATCH --account=acct
#SBATCH --cpus-per-task=2
#SBATCH --error=/golden/folder/%j/%j_0_log.err
#SBATCH --gpus-per-node=1
#SBATCH --job-name=proxy-score-abc
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output=/golden/folder/%j/%j_0_log.out
#SBATCH --partition=debug
#SBATCH --signal=USR2@90
#SBATCH --time=30
#SBATCH --wckey=submitit

# setup
module load cuda

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /golden/folder/%j/%j_%t_log.out --error /golden/folder/%j/%j_%t_log.err python -u -m submitit.core._submit /golden/folder/%j
