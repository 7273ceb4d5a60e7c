"""The ``hadref`` command line: one subcommand per job, each in its own module.

Subcommands are imported only when run (``hadref --help`` lists them), so a command pays
only for its own imports. Library errors (:class:`hadref.errors.HadrefError`) become a
one-line ``hadref: error: ...`` message and exit code 2, never a traceback.
"""

import importlib
import importlib.util
import sys

import click

from hadref.errors import HadrefError

# subcommand -> "module:attribute" (module relative to hadref.cli)
_COMMANDS = {
    "convert": "convert:convert",
    "info": "convert:info",
    "generate": "decoder:generate",
    "perplexity": "decoder:perplexity",
    "passkey": "longctx:passkey",
    "bench": "bench:bench",
    "finetune": "train:finetune",
    "distill": "train:distill",
    "evaluate": "train:evaluate",
    "glue": "glue:glue",
    "hw": "hw:hw",
    "export": "export:export",
    "plot": "plot:plot",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(
            name for name, target in _COMMANDS.items()
            if importlib.util.find_spec(f"hadref.cli.{target.split(':')[0]}") is not None
        )

    def get_command(self, ctx, name):
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(f"hadref.cli.{module}"), attr)

    def parse_args(self, ctx, args):
        # the command line as typed, for the provenance of the files a command writes
        ctx.meta["hadref.command"] = ["hadref", *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HadrefError as err:
            from hadref.train.parallel import abort_if_parallel, rank_note

            click.echo(f"hadref: error{rank_note()}: {err}", err=True)
            abort_if_parallel(2)   # under mpiexec: stop every rank, none waits forever
            sys.exit(2)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort,
                SystemExit):
            raise
        except BaseException:
            # a bug on one MPI rank: show it, then stop every rank (the others would wait)
            from hadref.train.parallel import abort_if_parallel

            if "mpi4py.MPI" in sys.modules:
                import traceback

                traceback.print_exc()
            abort_if_parallel(1)
            raise


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hadref")
def main():
    """hadref: Hamming Attention Distillation in NumPy and Numba.

    Convert real BERT or Llama weights to our HDF5 file, run a decoder, fine-tune a
    teacher, distill it into a HAD student, evaluate it (at any N), plot or export it,
    time the packed kernels, or model the CAM accelerator.
    `hadref COMMAND --help` says how to use each command.
    """
