"""Images for the reports (PNG, rendered offline by `dvc plots show` / `dvc plots diff`)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ais.files import atomic_file  # noqa: E402


def save_figure(fig, path: Path | str) -> None:
    """PNG, written atomically, without a timestamp (same figure -> same bytes)."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def plot_umap(coords: np.ndarray, labels: np.ndarray, categories: list[str], path: Path | str, title: str) -> None:
    """2-D UMAP scatter of the map's embeddings, coloured by category."""
    fig, ax = plt.subplots(figsize=(8, 6.5))
    cmap = plt.get_cmap("tab10" if len(categories) <= 10 else "tab20")
    for c, name in enumerate(categories):
        sel = labels == c
        ax.scatter(coords[sel, 0], coords[sel, 1], s=4, alpha=0.6, color=cmap(c % cmap.N), label=name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=4, fontsize=8, loc="best", frameon=False)
    save_figure(fig, path)


def plot_pivot_sweep(table: list[dict], path: Path | str, chance: float, title: str) -> None:
    """k-NN routing accuracy against the router's pivot layer."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.set_title(title, fontsize=10)
    x = [r["pivot_layer"] for r in table]
    for key, label in (("knn_accuracy_heldout", "held-out prompts"), ("knn_accuracy_heldout_task", "held-out tasks")):
        if key in table[0]:
            ax.plot(x, [r[key] for r in table], marker="o", ms=3, label=label)
    ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("pivot layer (layers run by the router)")
    ax.set_ylabel("k-NN routing accuracy")
    ax.set_ylim(0, 1)
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_importance(normalised: dict, raw: dict, categories: list[str], path: Path | str) -> None:
    """Heatmaps (categories x layers) of each importance measure, normalised per category."""
    methods = list(normalised)
    fig, axes = plt.subplots(len(methods), 1, figsize=(10, 2.2 + 0.9 * len(categories) * len(methods) / 2),
                             squeeze=False)
    for ax, method in zip(axes[:, 0], methods):
        im = ax.imshow(normalised[method], aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(range(len(categories)), categories, fontsize=7)
        ax.set_xticks(range(normalised[method].shape[1]))
        ax.tick_params(axis="x", labelsize=6)
        ax.set_title(f"{method} (normalised per category; layer 0 fixed at 1, never skipped)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.02)
    axes[-1, 0].set_xlabel("layer")
    fig.tight_layout()
    save_figure(fig, path)


def plot_frontier(rows: list[dict], path: Path | str, title: str, batch_size: int = 1) -> None:
    """Left: top-1 agreement with the full model (95% interval over prompts) against the generation
    speedup measured for that point at `batch_size` (interquartile range over repeats). Middle and
    right: top-1 agreement and KL against the layers the decoded tokens actually skipped. A line per method."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    key = f"b{batch_size}_speedup"
    for method in sorted({r["method"] for r in rows}):
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["layers_skipped"])
        style = dict(marker="o", ms=4) if len(pts) > 1 else dict(marker="*", ms=12, ls="none")
        yerr = [[p["top1"] - p["top1_ci_low"] for p in pts], [p["top1_ci_high"] - p["top1"] for p in pts]]
        timed = [p for p in pts if key in p]
        if timed:
            axes[0].errorbar([p[key] for p in timed], [p["top1"] for p in timed],
                             xerr=[[p[key] - p[f"{key}_q1"] for p in timed], [p[f"{key}_q3"] - p[key] for p in timed]],
                             yerr=[[p["top1"] - p["top1_ci_low"] for p in timed], [p["top1_ci_high"] - p["top1"] for p in timed]],
                             label=method, capsize=2, elinewidth=0.8, **style)
        axes[1].errorbar([p["layers_skipped"] for p in pts], [p["top1"] for p in pts], yerr=yerr, label=method,
                         capsize=2, elinewidth=0.8, **style)
        axes[2].plot([p["layers_skipped"] for p in pts], [p["kl"] for p in pts], label=method, **style)
    axes[0].set_xlabel(f"measured generation speedup at batch {batch_size} (x, vs full model)")
    axes[0].set_ylabel("top-1 agreement with full model")
    axes[1].set_xlabel("layers skipped per generated token (measured)")
    axes[1].set_ylabel("top-1 agreement with full model")
    axes[2].set_xlabel("layers skipped per generated token (measured)")
    axes[2].set_ylabel("KL(full || skipped)")
    axes[2].set_yscale("symlog", linthresh=0.1)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(frameon=False, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_lossless(per_category: dict, system_dtype: str, path: Path | str, title: str) -> None:
    """Tokens/s against transformers `generate` greedy (bfloat16), per category (rows): the user's
    baselines and the loop's drafters in `system_dtype`, and the chosen-drafter system."""
    categories = sorted(per_category)
    bars = [k for k in per_category[categories[0]] if "/" in k and k != "speedup_vs"
            and (k.startswith(system_dtype + "/") or k.endswith("/generate") or k.endswith("/generate_prompt_lookup"))
            and "routed_skip_" not in k]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.16 * len(categories) * len(bars)))
    height = 0.8 / len(bars)
    for i, name in enumerate(bars):
        y = np.arange(len(categories)) + (i - (len(bars) - 1) / 2) * height
        ax.barh(y, [per_category[c][name] for c in categories], height, label=name)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_yticks(range(len(categories)), categories, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"tokens/s against {per_category[categories[0]]['speedup_vs']} in the same run (x)")
    ax.set_title(title, fontsize=10, pad=60)
    ax.legend(frameon=False, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
    ax.grid(alpha=0.3, axis="x")
    save_figure(fig, path)


def plot_depth(examples: dict[str, dict], n_layers: int, flexidepth: dict[str, float], path: Path | str, title: str) -> None:
    """Layers each token needs along one generation per operation: L - skippable, and the
    saturation layer; FlexiDepth's mean for that operation (as a fraction of its layers) dashed."""
    fig, axes = plt.subplots(2, 3, figsize=(12, 6), sharey=True)
    for ax, (op, depths) in zip(axes.flat, examples.items()):
        steps = np.arange(len(depths["needed"]))
        ax.step(steps, depths["needed"], where="mid", label="needed (L - skippable)")
        ax.step(steps, depths["saturation"], where="mid", alpha=0.7, label="saturation layer")
        if op in flexidepth:
            ax.axhline(flexidepth[op] * n_layers, color="black", ls="--", lw=1, label="FlexiDepth mean (scaled)")
        ax.set_title(op, fontsize=10)
        ax.set_xlabel("generated token")
        ax.set_ylim(0, n_layers + 0.5)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("layers")
    axes[1, 0].set_ylabel("layers")
    axes[0, 0].legend(frameon=False, fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=11)
    save_figure(fig, path)


def plot_sweep(rows: list[dict], x: str, y: str, by: str | None, path: Path | str, log_x: bool = False) -> None:
    """One metric against one param across the experiments of a sweep, a line per value of `by` (or per
    metric where rows carry `metric`), with the 95% interval where rows carry `low` and `high`."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    key = (lambda r: str(r.get("metric") or r["by"]))
    for group in sorted({key(r) for r in rows}):
        pts = sorted((r for r in rows if key(r) == group), key=lambda r: r["x"])
        label = group if pts[0].get("metric") else f"{by}={group}" if by else None
        xs, ys = [p["x"] for p in pts], [p["y"] for p in pts]
        if all(p.get("low") is not None for p in pts):
            ax.errorbar(xs, ys, yerr=[[p["y"] - p["low"] for p in pts], [p["high"] - p["y"] for p in pts]], marker="o",
                        ms=4, capsize=3, label=label)
        else:
            ax.plot(xs, ys, marker="o", ms=4, label=label)
    if any(r.get("low") is not None for r in rows):
        ax.axhline(0, color="grey", lw=0.8)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    if by or any(r.get("metric") for r in rows):
        ax.legend(frameon=False, fontsize=8)
    ax.set_title(f"{len({r['name'] for r in rows})} experiments", fontsize=10)
    save_figure(fig, path)
