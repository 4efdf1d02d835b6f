"""The Typer application every command module registers on."""

import typer

app = typer.Typer(
    name="ctscope",
    help="Inspect, analyse and safely resize Calico eBPF conntrack (CT) maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

state = {"debug": False, "unverified": False}


@app.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    unverified: bool = typer.Option(False, "--unverified",
                                    help="Read Arrow snapshots that carry no CRC (not written by ctscope, or stripped)."),
) -> None:
    state["debug"] = debug
    state["unverified"] = unverified
