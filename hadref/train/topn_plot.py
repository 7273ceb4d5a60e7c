"""The accuracy-against-N figure (the paper's Figure 3 on our models): ``hadref plot topn``.

Input: the results JSON of ``hadref evaluate --top-n ...`` (one or several files: a
student, the binarized teacher). Each file is one curve of its main metric against N; a
float teacher metric found in a file (``reference``: the teacher of a student, from its
provenance, or the float model of ``--binarize``) is drawn as a horizontal line.
"""

from __future__ import annotations

from pathlib import Path

from hadref.errors import HadrefError
from hadref.files import read_json_file


def read_results(path) -> dict:
    """One ``evaluate --top-n`` results file, checked: it has ``by_top_n`` on dev."""
    path = Path(path)
    data = read_json_file(path, "`hadref evaluate --results` output")
    if not isinstance(data, dict) or not data.get("by_top_n"):
        raise HadrefError(f"{path}: no by_top_n field: make it with `hadref evaluate MODEL "
                          f"--top-n 4,8,16,30 --results {path.name}` (a student or --binarize)")
    return data


def curve_label(data: dict) -> str:
    if data.get("binarized"):
        return "teacher binarized, no distillation"
    return f"HAD student (trained at N = {data.get('student_top_n') or data.get('top_n')})"


def plot_topn(paths, out, metric: str | None = None) -> Path:
    """Draw metric (default: the task's first, e.g. accuracy) against N, N on a log axis,
    one curve per results file and the float teacher as a dashed line; save to ``out``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HadrefError("hadref plot: needs matplotlib (pip install 'hadref[plot]')") from None
    runs = [read_results(p) for p in paths]
    tasks = {r["task"] for r in runs}
    if len(tasks) != 1:
        raise HadrefError(f"hadref plot topn: the results are of different tasks ({sorted(tasks)})")
    fig, ax = plt.subplots(figsize=(6, 4.2))
    references = {}
    for data, path in zip(runs, paths):
        ns = sorted(int(n) for n in data["by_top_n"])
        name = metric or next(iter(data["by_top_n"][str(ns[0])]))
        if name not in data["by_top_n"][str(ns[0])]:
            raise HadrefError(f"{path}: no metric {name!r} (has "
                              f"{', '.join(data['by_top_n'][str(ns[0])])})")
        ax.plot(ns, [100 * data["by_top_n"][str(n)][name] for n in ns], "o-",
                label=curve_label(data))
        if data.get("reference") and name in data["reference"]:
            references[round(data["reference"][name], 6)] = data["reference"][name]
    for value in references.values():
        ax.axhline(100 * value, color="gray", linestyle="--",
                   label=f"teacher (float): {100 * value:.2f}")
    ax.set_xscale("log", base=2)
    all_ns = sorted({int(n) for d in runs for n in d["by_top_n"]})
    ax.set_xticks(all_ns)
    ax.set_xticklabels([str(n) for n in all_ns])
    ax.set_xlabel("N (keys kept per query row)")
    ax.set_ylabel(f"{tasks.pop()} dev {name} (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from hadref.files import write_figure

    out = write_figure(fig, out)
    plt.close(fig)
    return out
