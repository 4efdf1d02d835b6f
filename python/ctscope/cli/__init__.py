"""`ctscope` command line. One module per command under ctscope/cli/."""

from __future__ import annotations

import sys

import click

from ctscope.cli.app import app, state
from ctscope.errors import CtscopeError, exit_code

# Importing a module registers its command(s) on `app`.
from ctscope.cli import bench, demo, dump, maps, synth  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors with distinct exit codes (see README), tracebacks
    only with --debug."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        app(args=argv, standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except click.exceptions.Abort:
        print("ctscope: interrupted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("ctscope: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # `ctscope dump | head`: the reader went away; that is not an error.
        _silence_stdout()
        sys.exit(0)
    except (CtscopeError, OSError) as e:
        if debug or state["debug"]:
            raise
        print(f"ctscope: error: {_one_line(e)}", file=sys.stderr)
        sys.exit(exit_code(e) if isinstance(e, CtscopeError) else _os_exit(e))


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split())


def _os_exit(e: OSError) -> int:
    import errno

    from ctscope import errors

    if e.errno in (errno.EACCES, errno.EPERM):
        return errors.EXIT_PERMISSION
    if e.errno == errno.ENOENT:
        return errors.EXIT_NOT_FOUND
    return errors.EXIT_ERROR


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
