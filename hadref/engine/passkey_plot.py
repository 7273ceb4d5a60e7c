"""The passkey figure: accuracy against prompt length and needle depth (``hadref plot passkey``).

Input: one or several results files of ``hadref passkey --json`` (the teacher, the
binarized teacher, a student). Files of one model (the same label: by default the model
file's name and kind) are merged into one panel, so that grids run separately (1k-2k with
more trials, 8k with fewer) draw together. Each model is one panel: a heatmap of accuracy (%) with the
needle depth on the vertical axis and the prompt length on the horizontal one, each cell
annotated with its accuracy and trial count; a last panel draws the accuracy per length of
every file as curves (length on a log axis).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hadref.engine.passkey import FORMAT
from hadref.errors import HadrefError
from hadref.files import read_json_file


def read_passkey(path) -> dict:
    """One ``hadref passkey --json`` file, checked."""
    path = Path(path)
    data = read_json_file(path, "`hadref passkey --json` output")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise HadrefError(f"{path}: not a hadref passkey results file (make one with "
                          f"`hadref passkey MODEL.h5 --json {path.name}`)")
    return data


def label_of(data: dict, path) -> str:
    s = data["settings"]
    kind = s.get("model_kind", "float")
    name = Path(s.get("model", str(path))).stem
    return name if kind == "float" else f"{name} ({kind})"


def merge_runs(runs: list, names: list) -> tuple[list, list]:
    """Runs with equal names merged: lengths and depths the sorted unions, the cells of all
    (a cell run in two files: the one with more trials)."""
    merged, order = {}, []
    for data, name in zip(runs, names):
        if name not in merged:
            merged[name] = {"settings": {"lengths": [], "depths": []}, "cells": {}}
            order.append(name)
        m = merged[name]
        m["settings"]["lengths"] = sorted(set(m["settings"]["lengths"]) | set(data["settings"]["lengths"]))
        m["settings"]["depths"] = sorted(set(m["settings"]["depths"]) | set(data["settings"]["depths"]))
        for c in data["by_cell"]:
            key = (c["length"], c["depth"])
            if key not in m["cells"] or c["trials"] > m["cells"][key]["trials"]:
                m["cells"][key] = c
    out = []
    for name in order:
        m = merged[name]
        cells = list(m["cells"].values())
        by_length = {}
        for n in m["settings"]["lengths"]:
            mine = [c for c in cells if c["length"] == n]
            tot, good = sum(c["trials"] for c in mine), sum(c["correct"] for c in mine)
            by_length[str(n)] = {"trials": tot, "correct": good,
                                 "accuracy": good / tot if tot else None}
        out.append({"settings": m["settings"], "by_cell": cells, "by_length": by_length})
    return out, order


def accuracy_grid(data: dict):
    """(depths, lengths, acc (D, L) with NaN where no trial ran, trials (D, L) int)."""
    s = data["settings"]
    lengths, depths = s["lengths"], s["depths"]
    acc = np.full((len(depths), len(lengths)), np.nan)
    trials = np.zeros((len(depths), len(lengths)), int)
    for c in data["by_cell"]:
        i, j = depths.index(c["depth"]), lengths.index(c["length"])
        trials[i, j] = c["trials"]
        if c["accuracy"] is not None:
            acc[i, j] = 100 * c["accuracy"]
    return depths, lengths, acc, trials


def plot_passkey(paths, out, labels=None) -> Path:
    """Draw the panels described in the module docstring; save to ``out`` (.png, .svg, .pdf)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HadrefError("hadref plot: needs matplotlib (pip install 'hadref[plot]')") from None
    runs = [read_passkey(p) for p in paths]
    if labels is not None and len(labels) != len(runs):
        raise HadrefError(f"--label: {len(labels)} labels for {len(runs)} results files")
    runs, names = merge_runs(runs, labels or [label_of(d, p) for d, p in zip(runs, paths)])
    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(3.8 * (len(runs) + 1), 3.8),
                             squeeze=False, layout="constrained")
    axes = axes[0]
    image = None
    for ax, data, name in zip(axes, runs, names):
        depths, lengths, acc, trials = accuracy_grid(data)
        image = ax.imshow(acc, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto", origin="upper")
        ax.set_xticks(range(len(lengths)), [f"{n // 1024}k" if n % 1024 == 0 else str(n)
                                            for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("needle depth (0: start, 1: end)")
        ax.set_title(name, fontsize=9)
        for i in range(len(depths)):
            for j in range(len(lengths)):
                text = "-" if np.isnan(acc[i, j]) else f"{acc[i, j]:.0f}\n({trials[i, j]})"
                ax.text(j, i, text, ha="center", va="center", fontsize=7)
    curves = axes[-1]
    for data, name in zip(runs, names):
        lengths = data["settings"]["lengths"]
        by_length = data["by_length"]
        ys = [np.nan if by_length[str(n)]["accuracy"] is None else 100 * by_length[str(n)]["accuracy"]
              for n in lengths]
        curves.plot(lengths, ys, "o-", label=name)
    curves.set_xscale("log", base=2)
    all_lengths = sorted({n for d in runs for n in d["settings"]["lengths"]})
    curves.set_xticks(all_lengths, [str(n) for n in all_lengths])
    curves.set_ylim(-5, 105)
    curves.set_xlabel("prompt length (tokens)")
    curves.set_ylabel("passkey accuracy (%), all depths")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=list(axes[:-1]), shrink=0.8, label="accuracy (%)")
    from hadref.files import write_figure

    out = write_figure(fig, out)
    plt.close(fig)
    return out
