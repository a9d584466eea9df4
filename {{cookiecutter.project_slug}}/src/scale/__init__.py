"""Scale-out: run many tasks (sweep points, cache shards, SAEs) on a launcher (processes here,
a SLURM job array through submitit, or Modal), skip what is done and gather the results.
The top layer of src: it may import every other folder; only scripts import it."""
