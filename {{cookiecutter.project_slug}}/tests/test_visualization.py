"""Patching heatmaps and circuit graphs: what is drawn where, and the files they write."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.image import AxesImage, imread
from matplotlib.patches import FancyBboxPatch, Rectangle

from src.visualization.circuit import circuit_figure, plot_circuit
from src.visualization.circuit_geometry import circuit_layout, validate_circuit, visible_subgraph
from src.visualization.circuit_html import save_circuit_html
from src.visualization.heatmap import significant_cells
from src.visualization.heatmap_html import save_heatmap_html
from src.visualization.patching import heatmap_figure, plot_patching_heatmap

NAN = float("nan")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_pixels: int = 200) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width, channels = imread(path).shape
    assert height >= min_pixels and width >= min_pixels and channels == 4
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


# --- patching heatmaps -----------------------------------------------------------------------

VALUES = torch.tensor([[0.5, NAN, -0.1, 0.0], [0.2, 0.7, 0.5, 1.0]])
CI_LOW = VALUES - torch.tensor([[0.1, NAN, 0.2, 0.1], [0.3, 0.1, 0.1, 0.1]])
CI_HIGH = VALUES + 0.1
# CI excludes 0 at (0,0) [0.4, 0.6], (1,1), (1,2), (1,3); not at (0,2) [-0.3, 0], (0,3), (1,0)
SIGNIFICANT = {(0, 0), (1, 1), (1, 2), (1, 3)}


def image_axes(fig):
    return [ax for ax in fig.axes if any(isinstance(a, AxesImage) for a in ax.get_children())]


def test_significant_cells():
    mask = significant_cells(CI_LOW, CI_HIGH)
    assert {tuple(map(int, rc)) for rc in np.argwhere(mask)} == SIGNIFICANT
    below = significant_cells(torch.tensor([-2.0, -1.0]), torch.tensor([-0.5, 0.5]))
    assert below.tolist() == [True, False]
    assert significant_cells(torch.tensor([0.5]), torch.tensor([0.9]), baseline=1.0).tolist() == [
        True
    ]


def test_heatmap_layers_top_down_symmetric_colours_nan_grey_and_ci_boxes():
    fig = heatmap_figure(VALUES, title="heads", ci_low=CI_LOW, ci_high=CI_HIGH)
    (ax,) = image_axes(fig)
    (image,) = ax.get_images()
    assert ax.yaxis_inverted() and ax.get_ylim() == (1.5, -0.5)  # layer 0 is the top row
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1"]
    assert ax.get_xlabel() == "Head" and ax.get_ylabel() == "Layer"
    assert (image.norm.vmin, image.norm.vmax) == (-1.0, 1.0)  # symmetric around 0, |max| = 1
    assert image.cmap.get_bad() == pytest.approx(to_rgba("lightgrey"))
    assert np.ma.getmaskarray(image.get_array()).tolist() == [
        [False, True, False, False],
        [False, False, False, False],
    ]
    texts = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }
    assert len(texts) == 7 and (0, 1) not in texts  # every cell but the NaN one
    assert texts[(0, 0)] == "0.50" and texts[(1, 3)] == "1.00"
    boxes = {
        (round(p.get_y() + 0.5), round(p.get_x() + 0.5))
        for p in ax.patches
        if isinstance(p, Rectangle) and not p.get_fill()
    }
    assert boxes == SIGNIFICANT


def test_heatmap_center_and_large_grid():
    values = torch.linspace(0.0, 3.0, 12 * 20).reshape(12, 20)  # 20 columns: too many to write
    fig = heatmap_figure(values, title="pos", x_label="position", center=1.0)
    (ax,) = image_axes(fig)
    (image,) = ax.get_images()
    assert (image.norm.vmin, image.norm.vmax) == pytest.approx((-1.0, 3.0))
    assert len(ax.texts) == 0 and ax.get_xlabel() == "Position"


def test_heatmap_per_head_and_position_is_one_panel_per_head():
    values = torch.arange(2 * 5 * 3, dtype=torch.float).reshape(2, 5, 3)
    tokens = ["<bos>", " a", "$x$", " b", "\n"]
    fig = heatmap_figure(values, title="by pos", xticklabels=tokens)
    panels = image_axes(fig)
    assert [ax.get_title() for ax in panels] == ["head 0", "head 1", "head 2"]
    for head, ax in enumerate(panels):
        assert np.array_equal(ax.get_images()[0].get_array(), values[:, :, head].double().numpy())
    labels = [t.get_text() for t in panels[0].get_xticklabels()]
    assert labels == ["<bos>", " a", r"\$x\$", " b", "\\n"]  # no mathtext, no line break
    assert panels[-1].get_xlabel() == "Position"


def test_plot_patching_heatmap_writes_a_png(tmp_path):
    path = plot_patching_heatmap(
        VALUES, tmp_path / "figs" / "heads.png", title="heads", ci_low=CI_LOW, ci_high=CI_HIGH
    )
    assert path == tmp_path / "figs" / "heads.png"
    assert_png(path)
    path3 = plot_patching_heatmap(torch.randn(2, 6, 4), tmp_path / "pos.png", title="pos")
    assert_png(path3)


def test_heatmap_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="values must be"):
        plot_patching_heatmap(torch.zeros(4), tmp_path / "x.png", title="t")
    with pytest.raises(ValueError, match="ci_high must have"):
        heatmap_figure(VALUES, title="t", ci_low=CI_LOW, ci_high=CI_HIGH[:1])
    with pytest.raises(ValueError, match="ci_low and ci_high"):
        heatmap_figure(VALUES, title="t", ci_low=CI_LOW)
    with pytest.raises(ValueError, match="xticklabels must have 4"):
        save_heatmap_html(VALUES, tmp_path / "x.html", title="t", xticklabels=["a"])


def test_heatmap_html_one_cell_per_entry(tmp_path):
    path = save_heatmap_html(
        VALUES, tmp_path / "out" / "heads.html", title="L<0>", ci_low=CI_LOW, ci_high=CI_HIGH
    )
    text = path.read_text()
    cells = re.findall(r'<td class="([^"]*)"[^>]*title="([^"]*)"', text)
    assert len(cells) == VALUES.numel()
    assert sum("sig" in classes.split() for classes, _ in cells) == len(SIGNIFICANT)
    assert [tip for classes, tip in cells if "nan" in classes.split()] == [
        "layer 0, head 1: not patched"
    ]
    assert "layer 1, head 3: 1.00 (CI 0.90 to 1.10)" in [tip for _, tip in cells]
    assert "L&lt;0&gt;" in text and "http" not in text and "<script" not in text

    values = torch.randn(3, 4, 2)
    tokens = ["<bos>", "a", "b", "c"]
    text = save_heatmap_html(values, tmp_path / "pos.html", title="p", xticklabels=tokens)
    text = text.read_text()
    assert text.count('<td class="cell') == values.numel() and text.count("<caption>") == 2
    assert "&lt;bos&gt;" in text and "<bos>" not in text


# --- circuit graphs --------------------------------------------------------------------------


def make_circuit(n_layers: int = 2, n_heads: int = 4, mlp: bool = True) -> dict:
    """All nodes; a few edges, the in-circuit ones through a0.h2 (an induction circuit)."""
    nodes = [{"name": "input", "layer": -1, "score": None, "in_circuit": True}]
    for layer in range(n_layers):
        for head in range(n_heads):
            inside = (layer, head) in {(0, 2), (1, 0), (1, 1)}
            nodes.append(
                {
                    "name": f"a{layer}.h{head}",
                    "layer": layer,
                    "head": head,
                    "score": 0.1 * head,
                    "in_circuit": inside,
                }
            )
        if mlp:
            nodes.append({"name": f"m{layer}", "layer": layer, "score": 0.2, "in_circuit": False})
    nodes.append({"name": "logits", "layer": n_layers, "score": None, "in_circuit": True})

    def edge(source, target, qkv, score, inside):
        return {
            "source": source,
            "target": target,
            "qkv": qkv,
            "score": score,
            "in_circuit": inside,
        }

    edges = [
        edge("input", "a0.h2", "v", 0.5, True),
        edge("a0.h2", "a1.h0", "k", 0.9, True),
        edge("a0.h2", "a1.h1", "k", 0.4, True),
        edge("input", "a1.h0", "q", -0.3, True),
        edge("input", "a1.h0", "v", 0.6, True),
        edge("a1.h0", "logits", None, 1.2, True),
        edge("a1.h1", "logits", None, 0.8, True),
        edge("input", "logits", None, 0.7, True),  # skips every row
        edge("a0.h0", "a1.h3", "q", -0.05, False),
        edge("a1.h3", "logits", None, 0.02, False),
    ]
    if mlp:
        edges.append(edge("a0.h1", "m0", None, 0.01, False))
    return {
        "nodes": nodes,
        "edges": edges,
        "faithfulness": {"normalized": 0.93},
        "metadata": {"model": "toy-induction"},
    }


def test_validate_circuit_names_what_is_wrong():
    circuit = make_circuit()
    validate_circuit(circuit)
    for key in ("nodes", "edges"):
        broken = {k: v for k, v in circuit.items() if k != key}
        with pytest.raises(ValueError, match=f"missing the key '{key}'"):
            validate_circuit(broken)
    cases = [
        ({"source": "a0.h2", "target": "a5.h0", "qkv": "k"}, "edge a0.h2 -> a5.h0 \\(k\\): target"),
        ({"source": "a0.h2"}, r"circuit\['edges'\]\[0\] is missing the key 'target'"),
        ({"source": "input", "target": "a1.h0", "qkv": "x"}, "qkv must be"),
        ({"source": "input", "target": "logits", "qkv": "q"}, "target is not a head"),
        ({"source": "input", "target": "logits", "score": math.nan}, "finite number"),
    ]
    for bad_edge, message in cases:
        with pytest.raises(ValueError, match=message):
            validate_circuit({"nodes": circuit["nodes"], "edges": [bad_edge]})
    with pytest.raises(ValueError, match=r"nodes'\]\[1\]: node name 'head3'"):
        validate_circuit({"nodes": [{"name": "input"}, {"name": "head3"}], "edges": []})
    with pytest.raises(ValueError, match="duplicate node name 'm0'"):
        validate_circuit({"nodes": [{"name": "m0"}, {"name": "m0"}], "edges": []})


def test_layout_rows_input_to_logits_heads_in_order():
    layout = circuit_layout(make_circuit(n_layers=2, n_heads=4, mlp=True))
    y = {name: pos[1] for name, pos in layout.items()}
    assert y["input"] == 0 and y["logits"] == max(y.values()) == 5
    assert y["input"] < y["a0.h0"] < y["m0"] < y["a1.h0"] < y["m1"] < y["logits"]
    assert {y[f"a1.h{h}"] for h in range(4)} == {y["a1.h0"]}  # one row per layer's heads
    xs = [layout[f"a0.h{h}"][0] for h in range(4)]
    assert xs == sorted(xs) and sum(xs) == 0 and xs[1] - xs[0] == 1  # head order, centred
    assert layout["m0"][0] == layout["input"][0] == layout["logits"][0] == 0
    # no MLPs (attention-only): no empty MLP rows
    y = {n: p[1] for n, p in circuit_layout(make_circuit(mlp=False)).items()}
    assert (y["input"], y["a0.h0"], y["a1.h0"], y["logits"]) == (0, 1, 2, 3)


def test_visible_subgraph_keeps_the_circuit():
    circuit = make_circuit()
    shown = visible_subgraph(circuit, only_in_circuit=True)
    assert {n["name"] for n in shown["nodes"]} == {"input", "a0.h2", "a1.h0", "a1.h1", "logits"}
    assert len(shown["edges"]) == 8 and all(e["in_circuit"] for e in shown["edges"])
    # an in-circuit edge keeps its endpoints even if a node is not flagged
    circuit["nodes"][1 + 2]["in_circuit"] = False  # a0.h2
    assert "a0.h2" in {n["name"] for n in visible_subgraph(circuit)["nodes"]}
    everything = visible_subgraph(circuit, only_in_circuit=False)
    assert len(everything["nodes"]) == len(circuit["nodes"])
    assert len(everything["edges"]) == len(circuit["edges"])


def drawn(fig):
    (ax,) = [ax for ax in fig.axes if ax.patches]
    nodes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    collections = [c for c in ax.collections if isinstance(c, LineCollection)]
    return ax, nodes, collections


def test_circuit_figure_draws_the_visible_graph():
    circuit = make_circuit()
    ax, nodes, collections = drawn(circuit_figure(circuit, title="induction"))
    assert len(nodes) == 5 and sorted(t.get_text() for t in ax.texts) == sorted(
        ["input", "a0.h2", "a1.h0", "a1.h1", "logits"]
    )
    segments = [seg for c in collections for seg in c.get_segments()]
    assert len(segments) == 8
    # q, k, v and other edges: four collections, four line styles
    assert len(collections) == 4 and len({str(c.get_linestyle()) for c in collections}) == 4
    widths = sorted(w for c in collections for w in c.get_linewidths())
    assert widths[0] < widths[-1] == pytest.approx(4.0)  # the strongest edge (1.2) is widest
    colors = {tuple(np.round(rgba[:3], 3)) for c in collections for rgba in c.get_colors()}
    assert len(colors) == 2  # positive and negative
    # input -> logits skips two rows: curved, not straight through a0.h2 and a1.*
    skip = max(segments, key=lambda s: s[-1][1] - s[0][1])
    assert len(skip) > 2 and max(abs(x) for x, _ in skip) > 0.5
    assert ax.get_title() == "induction"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["input", "L0 attn", "L1 attn", "logits"]

    _, nodes, collections = drawn(circuit_figure(circuit, only_in_circuit=False))
    assert len(nodes) == len(circuit["nodes"])
    assert sum(len(c.get_segments()) for c in collections) == len(circuit["edges"])


def test_plot_circuit_writes_pngs(tmp_path):
    path = plot_circuit(make_circuit(), tmp_path / "figs" / "circuit.png", title="toy")
    assert path == tmp_path / "figs" / "circuit.png"
    assert_png(path)
    with pytest.raises(ValueError, match="missing the key 'edges'"):
        plot_circuit({"nodes": []}, tmp_path / "bad.png")


def test_circuit_figure_of_a_gpt2_sized_graph_stays_readable():
    big = make_circuit(n_layers=12, n_heads=12)
    fig = circuit_figure(big, only_in_circuit=False)
    width, height = fig.get_size_inches()
    assert 10 < width <= 20 and 15 < height <= 30  # 12 heads side by side, 26 rows
    ax, nodes, _ = drawn(fig)
    assert len(nodes) == len(big["nodes"]) and len(ax.texts) == len(big["nodes"])
    assert min(t.get_fontsize() for t in ax.texts) >= 6


def test_circuit_html_one_element_per_node_and_edge(tmp_path):
    circuit = make_circuit()
    text = save_circuit_html(circuit, tmp_path / "out" / "circuit.html", title="A<B").read_text()
    assert text.count('<g class="node">') == 5 and text.count('<g class="edge">') == 8
    assert "<title>a0.h2 -&gt; a1.h0 (k): score 0.9, in circuit</title>" in text
    assert "<title>a0.h2: score 0.2, in circuit</title>" in text
    assert "A&lt;B" in text and "&quot;normalized&quot;: 0.93" in text
    assert "http" not in text and "<script" not in text
    text = save_circuit_html(circuit, tmp_path / "all.html", only_in_circuit=False).read_text()
    assert text.count('<g class="node">') == len(circuit["nodes"])
    assert text.count('<g class="edge">') == len(circuit["edges"])
