"""Running the ``hadref`` command in tests: one invocation, and the two outcomes tests expect."""

from click.testing import CliRunner

from hadref.cli import main


def run(*args):
    """``hadref ARGS`` in-process (arguments made strings); the click Result."""
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result):
    """Require exit code 0; return the result."""
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def error(result, pattern):
    """Require a one-line error: exit code 2, no traceback, ``pattern`` in the output."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert pattern in result.output, result.output
    return result
