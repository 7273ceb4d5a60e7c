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


@plot.command("passkey")
@click.argument("results", nargs=-1, required=True, metavar="RESULTS.json...",
                type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="The figure to write (.png, .svg, .pdf).")
@click.option("--label", "labels", multiple=True,
              help="A name per results file, in order (default: the model file's name).")
def passkey(results, out, labels):
    """Passkey accuracy against prompt length and needle depth from `hadref passkey --json`
    files: one heatmap per file, then the accuracy per length of all files.

    \b
    Example:
      hadref passkey teacher.h5 --lengths 1024,2048 --json teacher-passkey.json
      hadref plot passkey teacher-passkey.json student-passkey.json -o passkey.png
    """
    from hadref.engine.passkey_plot import plot_passkey

    click.echo(f"wrote {plot_passkey(results, out, list(labels) or None)}")
