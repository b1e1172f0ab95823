"""The report's figures (matplotlib, Agg backend): similarity and mutual-kNN curves, PCA scatters and
centroid heatmaps, one PNG each, written next to report.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tnedit.evaluate.tables import conditions, knn_k

CONDITION_COLORS = {"original": "#1f77b4", "edited": "#d62728", "control": "#7f7f7f"}

def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out_dir: Path, name: str) -> str:
    """Write one figure and free it: figures of earlier conditions must not pile up in memory."""
    import matplotlib.pyplot as plt

    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def _gap(rep: dict[str, list[float]]) -> list[float]:
    return [a - b for a, b in zip(rep["cos_parallel"], rep["cos_nonparallel"], strict=True)]


def plot_curves(report: dict[str, Any], out_dir: Path) -> list[str]:
    """similarity.png (cosine: parallel solid, non-parallel dashed; below, their gap) and mutual_knn.png."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    langs = report["settings"]["languages"]
    en = report["settings"].get("english", "en")
    layers = report["layers"]
    written = []
    specs = [
        ("similarity.png", [
            ("last-token cosine", [("cos_parallel", "-", "parallel"), ("cos_nonparallel", "--", "non-parallel")]),
            ("parallel − non-parallel", [("gap", "-", "")]),
        ]),
        ("mutual_knn.png", [(f"mutual {knn_k(report)}-NN alignment", [("mutual_knn", "-", "")])]),
    ]
    for name, panels in specs:
        fig, axes = plt.subplots(
            len(panels), len(langs), figsize=(6.4 * len(langs), 3.6 * len(panels)), squeeze=False, sharex=True
        )
        for col, lang in enumerate(langs):
            for row, (ylabel, series) in enumerate(panels):
                ax = axes[row][col]
                for c in conditions(report):
                    rep = dict(report["conditions"][c]["representation"][lang])
                    rep["gap"] = _gap(rep)
                    # the original underneath, wider, so an unchanged control does not hide it
                    width, alpha = (3.2, 0.55) if c == "original" else (1.4, 0.95)
                    for key, style, what in series:
                        ax.plot(layers, rep[key], style, color=CONDITION_COLORS.get(c), marker="o", ms=3, lw=width,
                                alpha=alpha, label=f"{c} {what}".strip())
                if row == 0:
                    ax.set_title(f"{en}–{lang}")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_ylabel(ylabel)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
            axes[-1][col].set_xlabel("layer")
        fig.tight_layout()
        written.append(_save(fig, out_dir, name))
    return written


def plot_pca(report: dict[str, Any], out_dir: Path) -> list[str]:
    plt = _pyplot()
    written = []
    for c in conditions(report):
        pca = report["conditions"][c]["pca"]
        n_layers = len(pca["layers"])
        fig, axes = plt.subplots(1, n_layers, figsize=(4.0 * n_layers, 4.0), squeeze=False)
        cmap = plt.get_cmap("tab10")
        for ax, layer, coords, ratio in zip(axes[0], pca["layers"], pca["coords"], pca["explained"], strict=True):
            n = pca["n_per_language"]
            for g, lang in enumerate(pca["languages"]):
                pts = coords[g * n : (g + 1) * n]
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=9, alpha=0.7, color=cmap(g % 10), label=lang)
            ax.set_title(f"layer {layer} ({100 * (ratio[0] + ratio[1]):.0f}% var)")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"PCA of last-token states: {c}")
        fig.tight_layout()
        name = f"pca_{c}.png"
        written.append(_save(fig, out_dir, name))
    return written


def plot_centroids(report: dict[str, Any], out_dir: Path) -> list[str]:
    plt = _pyplot()
    written = []
    for c in conditions(report):
        cent = report["conditions"][c]["centroids"]
        langs = cent["languages"]
        n_layers = len(cent["layers"])
        fig, axes = plt.subplots(
            1, n_layers, figsize=(3.0 * n_layers + 1.2, 3.2), squeeze=False, constrained_layout=True
        )
        lo = min(min(min(r) for r in m) for m in cent["matrices"])
        vmin = min(lo, 0.99)
        image = None
        for ax, layer, matrix in zip(axes[0], cent["layers"], cent["matrices"], strict=True):
            image = ax.imshow(matrix, vmin=vmin, vmax=1.0, cmap="viridis")
            ax.set_xticks(range(len(langs)), langs)
            ax.set_yticks(range(len(langs)), langs)
            for i in range(len(langs)):
                for j in range(len(langs)):
                    value = matrix[i][j]
                    dark = (value - vmin) / max(1.0 - vmin, 1e-9) > 0.6
                    ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7, color="k" if dark else "w")
            ax.set_title(f"layer {layer}")
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
        fig.suptitle(f"cosine between language centroids: {c}")
        name = f"centroids_{c}.png"
        written.append(_save(fig, out_dir, name))
    return written


def write_plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    return [*plot_curves(report, out_dir), *plot_pca(report, out_dir), *plot_centroids(report, out_dir)]
