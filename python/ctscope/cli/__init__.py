"""`ctscope` command line. One module per command under ctscope/cli/."""

from __future__ import annotations

import errno
import signal
import sys
import threading

import typer

from ctscope.cli.app import app, state
from ctscope.errors import CtscopeError, exit_code, polars_gist
from ctscope.textsafe import printable

# Every command and the module that registers it on `app` (importing the module does), in
# the order `ctscope -h` lists them. A command line that names a command imports only that
# module: a one-shot command does not pay for the others' imports (serve's HTTP server, the
# report's charts, repair's checks: ~0.1 s of a ~0.25 s start). tests/test_cli_startup.py
# checks this table against what the modules register.
COMMANDS = {
    "bench": "bench", "check": "check", "demo": "demo", "dump": "dump", "maps": "maps", "resize": "resize",
    "restore": "resize", "synth": "synth", "clean": "clean", "delete": "delete", "flush": "flush", "get": "get",
    "diff": "diff", "expired": "expired", "metrics": "metrics", "query": "query", "report": "report",
    "snapshot": "snapshot", "stats": "stats", "top": "top", "watch": "watch", "serve": "serve",
}


def load_commands(args: list[str] | None = None) -> None:
    """Register the command `args` names, or every command (help, no command, a typo)."""
    import importlib

    name = None
    for a in args or []:
        if a in ("-h", "--help"):
            break  # the group's own help (`ctscope -h dump`): it lists every command
        if not a.startswith("-"):
            name = a
            break
    modules = [COMMANDS[name]] if name in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for m in modules:
        importlib.import_module(f"ctscope.cli.{m}")


# typer >= 0.2x vendors its own click (typer._click) and no longer installs click; older
# typer uses click itself. Catch whichever family is present (click only if installed).
try:
    import click
except ImportError:  # typer >= 0.2x alone
    click = None
_EXIT = tuple({typer.Exit, *((click.exceptions.Exit,) if click else ())})
_ABORT = tuple({typer.Abort, *((click.exceptions.Abort,) if click else ())})
_USAGE = tuple({*(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"),
                *((click.ClickException,) if click else ())})


class Terminated(BaseException):
    """SIGTERM (a timeout, a pod stopping) raised in the main thread: like Ctrl-C, it unwinds
    the command, so output files are not left half-written under temporary names, write
    commands release their locks, and a terminal UI restores the screen."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _terminate_like_interrupt() -> None:
    # Commands that stop gracefully on SIGTERM (serve) install their own handler after this.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors with distinct exit codes (see README), tracebacks
    only with --debug."""
    args = list(argv if argv is not None else sys.argv[1:])
    # The global --debug is accepted anywhere before a `--` (`ctscope dump --debug` too):
    # take it out here so that no command has to declare it.
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end]
    if debug:
        args = [a for a in args[:end] if a != "--debug"] + args[end:]
    _terminate_like_interrupt()
    try:
        try:
            load_commands(args)
            rv = app(args=args, standalone_mode=False)
        except SystemExit as e:
            # typer's _main catches EPIPE itself and calls sys.exit(1), even with
            # standalone_mode=False: recognise it by the OSError it was raised under.
            ctx = e.__context__
            if e.code == 1 and isinstance(ctx, OSError) and ctx.errno == errno.EPIPE:
                raise BrokenPipeError(errno.EPIPE, "Broken pipe") from None
            raise
        # typer turns Ctrl-C into Exit(130) and, outside standalone mode, *returns* an
        # Exit's code instead of raising it: pass it on (commands themselves return None).
        if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
            if rv == 130:
                print("ctscope: interrupted", file=sys.stderr)
            sys.exit(rv)
    except _EXIT as e:
        sys.exit(e.exit_code)
    except _USAGE as e:
        # One line, like every other error; `-h` still shows the whole usage.
        ctx = getattr(e, "ctx", None)
        where = f" (see `{ctx.command_path} -h`)" if ctx is not None else ""
        print(f"ctscope: error: {printable(' '.join(e.format_message().split()))}{where}", file=sys.stderr)
        sys.exit(2)
    except _ABORT:
        print("ctscope: interrupted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("ctscope: interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print("ctscope: terminated", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except BrokenPipeError:
        # `ctscope dump | head`: the reader went away; that is not an error.
        _silence_stdout()
        sys.exit(0)
    except (CtscopeError, OSError) as e:
        if debug or state["debug"]:
            import traceback

            traceback.print_exc()  # the traceback, and still the exit code scripts rely on
        print(f"ctscope: error: {printable(_one_line(e))}", file=sys.stderr)
        sys.exit(exit_code(e) if isinstance(e, CtscopeError) else _os_exit(e))
    except Exception as e:
        import polars as pl

        if not isinstance(e, (pl.exceptions.PolarsError, pl.exceptions.PanicException)):
            raise
        # polars writing to a stdout whose reader went away reports it in many words
        # ("Broken pipe", "Invalid thrift: transport error"); ctscope's own writers raise
        # BrokenPipeError (above).
        if "Broken pipe" in str(e) or _stdout_reader_gone():
            _silence_stdout()
            sys.exit(0)
        if debug or state["debug"]:
            raise
        print(f"ctscope: error: {printable(polars_gist(e))}", file=sys.stderr)
        # An expression the user wrote (--where, query SQL) that failed while running is bad input.
        sys.exit(2 if any(a in ("--where", "-w", "query") or a.startswith("--where=") for a in args) else 1)


def _stdout_reader_gone() -> bool:
    """stdout is a pipe whose read end is closed (poll reports POLLERR to its writer)."""
    import select

    try:
        p = select.poll()
        p.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in p.poll(0))
    except (OSError, ValueError):
        return False


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
