"""``hadref plot``: figures from results files."""

import click


@click.group()
def plot():
    """Figures from hadref results files (matplotlib: pip install 'hadref[plot]')."""


@plot.command("topn")
@click.argument("results", nargs=-1, required=True, metavar="RESULTS.json...",
                type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="The figure to write (.png, .svg, .pdf).")
@click.option("--metric", default=None, help="Metric to draw (default: the task's first).")
def topn(results, out, metric):
    """Metric against N from `hadref evaluate --top-n ... --results RESULTS.json` files (a
    student, the binarized teacher), the float teacher as a dashed line.

    \b
    Example:
      hadref evaluate student.h5 --task sst2 --top-n 4,8,16,30,64 --results student-topn.json
      hadref evaluate teacher.h5 --task sst2 --binarize --top-n 4,8,16,30,64 --results bin-topn.json
      hadref plot topn student-topn.json bin-topn.json -o topn.png
    """
    from hadref.train.topn_plot import plot_topn

    click.echo(f"wrote {plot_topn(results, out, metric)}")
