"""What the generated sections of CLAUDE.md / AGENTS.md list (for ``scripts/update_docs.py``):
the key-file groups, the data folders and the common commands. Plain data, no imports."""

KEY_FILE_GROUPS = {
    "Models and Data": ["src/models/*.py", "src/data/*.py"],
    "Experiments and Analysis": [
        "src/experiments/*.py",
        "src/analysis/*.py",
        "src/visualization/*.py",
        "src/utils/*.py",
        "src/scale/*.py",
    ],
    "Scripts and Configs": ["scripts/*.py", "configs/*.yaml"],
    "Notebooks": ["notebooks/*.ipynb"],
}
FOLDERS = {
    "data/activations/": "Cached activations (shards git-ignored; metadata JSON tracked)",
    "data/datasets/": "Evaluation datasets (local files)",
    "data/models/": "Trained toy models (git-ignored cache; retrained when missing)",
}
# (comment, command, file that must exist for the command to be listed). Every command runs
# offline on the toy model (tests/test_commands.py runs each one); pretrained variants are
# in the comments.
COMMANDS = [
    (
        "Baseline on the toy model (offline, no downloads)",
        "python scripts/run_experiment.py --config configs/toy_induction.yaml",
        "configs/toy_induction.yaml",
    ),
    (
        "Activation patching: which heads carry the induction answer? "
        "(gpt2-small IOI, downloads its weights: --config configs/gpt2_small.yaml)",
        "python scripts/run_experiment.py --config configs/toy_induction_patching.yaml",
        "configs/toy_induction_patching.yaml",
    ),
    (
        "Attribution patching (checked against activation patching) and direct logit attribution",
        "python scripts/run_experiment.py --config configs/toy_induction_attribution.yaml",
        "configs/toy_induction_attribution.yaml",
    ),
    (
        "Circuit discovery (EAP-IG) with a faithfulness check",
        "python scripts/run_experiment.py --config configs/toy_induction_circuit.yaml",
        "configs/toy_induction_circuit.yaml",
    ),
    (
        "Ablation (zero / mean / resample) of each head and attention output",
        "python scripts/run_experiment.py --config configs/toy_induction_ablation.yaml",
        "configs/toy_induction_ablation.yaml",
    ),
    (
        "Path patching: sender head -> receiver heads' query / key / value inputs",
        "python scripts/run_experiment.py --config configs/toy_induction_path_patching.yaml",
        "configs/toy_induction_path_patching.yaml",
    ),
    (
        "Logit lens (and a tuned lens): the answer's probability after each layer",
        "python scripts/run_experiment.py --config configs/toy_induction_logit_lens.yaml",
        "configs/toy_induction_logit_lens.yaml",
    ),
    (
        "Linear probes per layer on cached activations, against a control task (Hewitt & Liang)",
        "python scripts/run_experiment.py --config configs/toy_induction_probes.yaml",
        "configs/toy_induction_probes.yaml",
    ),
    (
        "Steering: add the difference of means (or an SAE latent's decoder row) with a "
        "sweep of coefficients; metric and greedy continuations per coefficient",
        "python scripts/run_experiment.py --config configs/toy_induction_steering.yaml",
        "configs/toy_induction_steering.yaml",
    ),
    (
        "Cache activations to data/activations/ (resumes if interrupted; "
        "gpt2-small: --model gpt2-small --layer 8 --dataset text, its text streamed from the Hub)",
        "python scripts/cache_activations.py --model toy-induction --layer 0 "
        "--dataset induction --n-tokens 32768",
        "scripts/cache_activations.py",
    ),
    (
        "Sharded caching: N tasks (--launcher local, slurm, modal; --shard I runs one), "
        "merged into the cache one process writes (README: Sharded caching)",
        "python scripts/cache_activations.py --model toy-induction --layer 0 "
        "--dataset induction --n-tokens 16384 --n-shards 2 --launcher local",
        "scripts/cache_activations.py",
    ),
    (
        "Train an SAE (configs/toy_sae_training.yaml; gpt2-small: --model gpt2-small --layer 8)",
        "python scripts/train_sae.py --model toy-induction --layer 0",
        "scripts/train_sae.py",
    ),
    (
        "Feature analysis of a saved SAE; pretrained SAELens SAEs, linked to Neuronpedia: "
        "--sae gpt2-small-res-jb --layer 8 (a release, release/id or folder)",
        "python scripts/analyze_sae.py --sae data/results/sae_toy_l0/sae",
        "scripts/analyze_sae.py",
    ),
    (
        "Sweep: every point of a config's sweep: section as one task (--launcher slurm: a job "
        "array; modal: Modal's GPUs); done points are skipped, so rerun a killed sweep",
        "python scripts/sweep.py --config configs/toy_induction_sweep.yaml --launcher local",
        "configs/toy_induction_sweep.yaml",
    ),
    (
        "SAE array: one SAE per layer (a task each); summary of explained variance, L0, dead latents",
        "python scripts/sweep.py --config configs/toy_sae_training_sweep.yaml --launcher local",
        "configs/toy_sae_training_sweep.yaml",
    ),
    (
        "Rebuild every figure from data/results/ into notebooks/figures/",
        "python -m src.visualization.generate_all",
        "src/visualization/generate_all.py",
    ),
    (
        "Time the fast activation patching against transformer_lens.patching "
        "(--model both adds a GPT-2-sized model)",
        "python scripts/benchmark_patching.py --model toy",
        "scripts/benchmark_patching.py",
    ),
    (
        "Time activation caching against a bare forward, and its peak memory at two sizes "
        "(--sharded adds 2 shards over 2 local tasks against one process)",
        "python scripts/benchmark_caching.py --model toy",
        "scripts/benchmark_caching.py",
    ),
    (
        "Time ablation sweeps against the same sweep through transformer_lens hooks "
        "(--model both adds a GPT-2-sized model; --kind pretrained: Hugging Face bridges)",
        "python scripts/benchmark_ablation.py --model toy",
        "scripts/benchmark_ablation.py",
    ),
    (
        "Refresh the generated sections of CLAUDE.md and AGENTS.md",
        "python scripts/update_docs.py",
        "scripts/update_docs.py",
    ),
    ("Run tests (fast suite; add `-m slow` for the heavy ones)", "pytest", "tests"),
    (
        "Lint, format and strip notebooks as the commit hook does",
        "pre-commit run --all-files",
        ".pre-commit-config.yaml",
    ),
]
