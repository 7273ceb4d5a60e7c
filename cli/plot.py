"""``hadref plot``: figures from results files."""

from pathlib import Path

import click

FORMATS = (".png", ".svg", ".pdf")


def _claim_figure(results, out, overwrite: bool) -> None:
    """Before any work: a known figure format, not one of the inputs, and no existing file
    replaced without --overwrite."""
    from hadref.errors import HadrefError
    from hadref.files import check_distinct, claim_outputs

    if Path(out).suffix.lower() not in FORMATS:
        raise HadrefError(f"-o {out}: expected a figure file ending in {', '.join(FORMATS)}")
    check_distinct({f"RESULTS.json ({p})": p for p in results}, {"-o": out})
    claim_outputs({"-o": out}, overwrite=overwrite)


_overwrite = click.option("--overwrite", is_flag=True, help="Replace an existing figure file.")


@click.group()
def plot():
    """Figures from hadref results files (matplotlib: pip install 'hadref[plot]')."""


@plot.command("topn")
@click.argument("results", nargs=-1, required=True, metavar="RESULTS.json...",
                type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="The figure to write (.png, .svg, .pdf).")
@click.option("--metric", default=None, help="Metric to draw (default: the task's first).")
@_overwrite
def topn(results, out, metric, overwrite):
    """Metric against N from `hadref evaluate --top-n ... --results RESULTS.json` files (a
    student, the binarized teacher), the float teacher as a dashed line.

    \b
    Example:
      hadref evaluate student.h5 --task sst2 --top-n 4,8,16,30,64 --results student-topn.json
      hadref evaluate teacher.h5 --task sst2 --binarize --top-n 4,8,16,30,64 --results bin-topn.json
      hadref plot topn student-topn.json bin-topn.json -o topn.png
    """
    from hadref.train.topn_plot import plot_topn

    _claim_figure(results, out, overwrite)
    click.echo(f"wrote {plot_topn(results, out, metric)}")


@plot.command("passkey")
@click.argument("results", nargs=-1, required=True, metavar="RESULTS.json...",
                type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="The figure to write (.png, .svg, .pdf).")
@click.option("--label", "labels", multiple=True,
              help="A name per results file, in order (default: the model file's name).")
@_overwrite
def passkey(results, out, labels, overwrite):
    """Passkey accuracy against prompt length and needle depth from `hadref passkey --json`
    files: one heatmap per file, then the accuracy per length of all files.

    \b
    Example:
      hadref passkey teacher.h5 --lengths 1024,2048 --json teacher-passkey.json
      hadref plot passkey teacher-passkey.json student-passkey.json -o passkey.png
    """
    from hadref.engine.passkey_plot import plot_passkey

    _claim_figure(results, out, overwrite)
    click.echo(f"wrote {plot_passkey(results, out, list(labels) or None)}")
