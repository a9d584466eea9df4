"""Circuit discovery experiment: EAP or EAP-IG edge scores, a pruned circuit and its
faithfulness, saved as JSON. The methods are in ``src.analysis.eap`` (scores),
``src.analysis.circuits`` (selection, evaluation, the saved format) and
``src.analysis.circuit_graph`` (the graph)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from src.experiments.registry import ExperimentKind
from src.utils.config import MetricName, NonNegativeInt, PositiveInt, Section
from src.utils.files import write_text_atomic
from src.utils.validation import Float, check

if TYPE_CHECKING:
    from src.data.dataset import ContrastDataset


class CircuitDiscoveryConfig(Section):
    """The ``circuit_discovery`` section: edge attribution patching (EAP; EAP-IG when
    ig_steps > 0), then a faithfulness check that ablates every edge outside the circuit."""

    metric: MetricName = "logit_diff"
    ig_steps: NonNegativeInt = 5  # integrated-gradient steps; 0 = plain EAP
    top_n: PositiveInt | None = 20  # keep the top_n edges by |score| ...
    threshold: Annotated[Float, Field(ge=0)] | None = None  # ... or every |score| >= it
    ablation: Literal["corrupted", "mean"] = "corrupted"  # what an ablated edge carries

    @model_validator(mode="after")
    def _one_selection(self) -> CircuitDiscoveryConfig:
        chosen = (self.top_n is not None) + (self.threshold is not None)
        check(chosen == 1, "top_n", "set exactly one of top_n and threshold (the other null)")
        return self


def discover_circuit(
    model: Any, dataset: ContrastDataset, config: Any, *, batch_size: int, progress: bool
) -> dict[str, Any]:
    """Score every edge, keep the config's top_n (or threshold), prune, and measure
    faithfulness with everything outside the circuit ablated. Returns the circuit dict
    (``nodes``, ``edges``, ``faithfulness``, ``metadata``; see ``circuit_dict``)."""
    from src.analysis.circuit_graph import model_graph
    from src.analysis.circuits import (
        circuit_dict,
        evaluate_circuit,
        faithfulness,
        prune,
        select_edges,
    )
    from src.analysis.eap import edge_scores

    section = config.circuit_discovery
    graph = model_graph(model)
    scores = edge_scores(
        model, dataset, section.metric, ablation=section.ablation, ig_steps=section.ig_steps,
        batch_size=batch_size, progress=progress,
    )  # fmt: skip
    valid = graph.valid_edges().to(scores.device)
    keep = prune(
        select_edges(scores, valid, top_n=section.top_n, threshold=section.threshold), graph
    )
    check = evaluate_circuit(
        model, dataset, keep, section.metric, ablation=section.ablation, batch_size=batch_size
    )
    metadata = {
        "model": config.model.name,
        "method": "EAP-IG" if section.ig_steps else "EAP",
        "ig_steps": section.ig_steps,
        "top_n": section.top_n,
        "threshold": section.threshold,
        "n_prompts": len(dataset),
        "dataset": dataset.name,
    }
    faith = faithfulness(check, section.metric, section.ablation, int(keep.sum()))
    return circuit_dict(graph, scores, keep, faith, metadata)


def save_circuit(circuit: dict[str, Any], path: str | Path) -> Path:
    """Write the circuit JSON atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(circuit, indent=1))
    return path


def run_circuit_discovery(
    model: Any,
    dataset: ContrastDataset,
    config: Any,
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """``discover_circuit``, saved as JSON in ``output.results_dir``; returns the summary
    that goes into the experiment log, with the attention patterns of the circuit's
    strongest heads on the first prompt."""
    from src.analysis.attention import circuit_head_scores, strongest_attention
    from src.analysis.circuits import edge_name, iter_circuit_edges

    circuit = discover_circuit(model, dataset, config, batch_size=batch_size, progress=progress)
    name = config.experiment.name
    path = save_circuit(circuit, Path(config.output.results_dir) / f"{name}_circuit.json")
    faith = circuit["faithfulness"]
    edges = sorted(iter_circuit_edges(circuit), key=lambda e: -abs(e["score"]))
    return {
        "n_samples": len(dataset),
        "n_edges": faith["n_edges"],
        "n_nodes": sum(n["in_circuit"] for n in circuit["nodes"]),
        "recovered": faith["recovered"],
        "recovered_low": faith["recovered_ci"]["low"],
        "recovered_high": faith["recovered_ci"]["high"],
        "clean_metric": faith["clean"]["mean"],
        "ablated_metric": faith["ablated"]["mean"],
        "circuit_metric": faith["circuit"]["mean"],
        "nodes": [n["name"] for n in circuit["nodes"] if n["in_circuit"]],
        "edges": [edge_name(e) for e in edges],
        "circuit_file": str(path),
        "figures": [],
        "attention": strongest_attention(
            model, dataset.clean_tokens[0], circuit_head_scores(circuit)
        ),
    }


KIND = ExperimentKind(
    name="circuit_discovery",
    label="circuit discovery",
    section=CircuitDiscoveryConfig,
    run=run_circuit_discovery,
    gradients=True,
    figures=("circuit", "attention"),
    headline="recovered",
)
