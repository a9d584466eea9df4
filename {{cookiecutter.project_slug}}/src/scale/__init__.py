"""Scale-out: run many tasks (sweep points, cache shards, SAEs) on a launcher (processes here,
a SLURM job array through submitit, or Modal), skipping what is done and gathering results."""
