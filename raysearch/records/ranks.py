"""Per-module rank allocations as a layers × module-types grid, and its heatmap.

Workers report `rank_allocation` as a JSON string (full module name -> live rank);
the tracking callback logs it to MLflow with this heatmap at the end of a trial.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

_LAYER = re.compile(r"\.(\d+)\.")


def parse(allocation: str | dict[str, int]) -> dict[str, int]:
    data = json.loads(allocation) if isinstance(allocation, str) else allocation
    return {str(k): int(v) for k, v in data.items()}


def grid(allocation: dict[str, int]) -> tuple[list[str], list[str], np.ndarray]:
    """Rows: layer indices (first number in the module name); columns: module types
    (the name's last part, e.g. query/value or q_proj/v_proj). Missing cells are NaN
    (not adapted); a pruned module shows 0."""
    cells: dict[tuple[str, str], int] = {}
    for name, rank in allocation.items():
        match = _LAYER.search(f".{name}.")
        layer = match.group(1) if match else "-"
        cell = (layer, name.rsplit(".", 1)[-1])
        cells[cell] = cells.get(cell, 0) + rank
    layers = sorted({k[0] for k in cells}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    kinds = sorted({k[1] for k in cells})
    values = np.full((len(layers), len(kinds)), np.nan)
    for (layer, kind), rank in cells.items():
        values[layers.index(layer), kinds.index(kind)] = rank
    return layers, kinds, values


def write_heatmap(path: Path, allocation: dict[str, int], title: str = "live rank per module") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, kinds, values = grid(allocation)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(kinds), 1.2 + 0.35 * len(layers)))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto", vmin=0)
    ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right")
    ax.set_yticks(range(len(layers)), [f"layer {layer}" for layer in layers])
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(j, i, f"{int(value)}", ha="center", va="center", color="w" if value < np.nanmax(values) / 2 else "k",
                    fontsize=8)
    fig.colorbar(image, ax=ax, label="rank")
    ax.set_title(f"{title} (total {int(np.nansum(values))})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
