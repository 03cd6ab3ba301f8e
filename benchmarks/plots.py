"""PNG plots of a benchmark run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.stats import MODES, TRAFFIC_CLASSES, Sample

__all__ = ["plot_latency", "plot_cached_share", "plot_cold_start"]

_COLORS = {"plain_rag": "#c44e52", "no_reuse": "#8c8c8c", "token_cache": "#dd8452", "full": "#4c72b0"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(samples: Sequence[Sample], agents: Sequence[str], path: Path, max_tokens: int) -> Path:
    """Box plots of TTFT (top) and total latency (bottom) per agent, one box per mode."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 2.2 * len(agents)), 8), sharex=True)
    modes = [m for m in MODES if any(s.mode == m and s.ok for s in samples)]
    width = 0.8 / max(1, len(modes))
    for ax, field, label in ((axes[0], "ttft_ms", "time to first token (ms)"),
                             (axes[1], "total_ms", f"total latency (ms), max_tokens={max_tokens}")):
        for j, mode in enumerate(modes):
            data, positions = [], []
            for i, agent in enumerate(agents):
                values = [getattr(s, field) for s in samples if s.ok and s.agent == agent and s.mode == mode]
                if values:
                    data.append(values)
                    positions.append(i + (j - (len(modes) - 1) / 2) * width)
            if not data:
                continue
            box = ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True,
                             showfliers=True, manage_ticks=False, medianprops={"color": "black"})
            for patch in box["boxes"]:
                patch.set_facecolor(_COLORS.get(mode, "#888888"))
                patch.set_alpha(0.75)
            ax.plot([], [], color=_COLORS.get(mode, "#888888"), linewidth=8, alpha=0.75, label=mode)
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=max(1, len(labels)), bbox_to_anchor=(0.5, 0.965))
    axes[1].set_xticks(range(len(agents)), agents)
    fig.suptitle("Latency per agent and mode (agent-side; log scale)")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cached_share(modes: Mapping[str, Mapping[str, Any]], path: Path,
                      classes: Sequence[str] = TRAFFIC_CLASSES) -> Path:
    """Grouped bars per traffic class, one bar per mode: the prefix-cached share of prompt tokens (top) and
    TTFT p50 (bottom), from the results' ``modes.<mode>.classes``. A class a mode has no requests of gets
    no bar."""
    plt = _pyplot()
    shown = [m for m in MODES if m in modes and modes[m].get("available", True)]
    shown += [m for m in modes if m not in shown and modes[m].get("available", True)]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 2.2 * len(classes)), 8), sharex=True)
    width = 0.8 / max(1, len(shown))
    for ax, key, label in ((axes[0], "prefix_cache_hit_rate", "prefix-cached share of prompt tokens"),
                           (axes[1], "ttft_p50_ms", "TTFT p50 (ms)")):
        for j, mode in enumerate(shown):
            xs, heights, counts = [], [], []
            for i, cls in enumerate(classes):
                entry = modes[mode].get("classes", {}).get(cls, {})
                if entry.get("requests") and entry.get(key) is not None:
                    xs.append(i + (j - (len(shown) - 1) / 2) * width)
                    heights.append(entry[key])
                    counts.append(entry["requests"])
            bars = ax.bar(xs, heights, width=width * 0.9, color=_COLORS.get(mode, "#888888"), label=mode)
            if key == "prefix_cache_hit_rate":
                for bar, value in zip(bars, heights):
                    ax.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=7)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 1.08)
    ns = []
    for cls in classes:
        n = max((modes[m].get("classes", {}).get(cls, {}).get("requests", 0) for m in shown), default=0)
        ns.append(f"{cls}\n(n={n} per mode)")
    axes[1].set_xticks(range(len(classes)), ns)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=max(1, len(labels)), bbox_to_anchor=(0.5, 0.965))
    fig.suptitle("Cached share and TTFT by traffic class and mode (all agents)")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cold_start(curves: Mapping[str, Sequence[float]], path: Path) -> Path:
    """Cumulative token-cache hit rate per request after a cache invalidation, one line per agent."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for agent, curve in curves.items():
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=agent)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("requests since invalidation (cold cache, no warm-up)")
    ax.set_ylabel("cumulative token-cache hit rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("Token-cache hit rate from a cold start")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
