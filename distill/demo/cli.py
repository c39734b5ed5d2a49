"""`kdgate demo build` and `kdgate demo eval` (filled in with the demo build)."""

import typer

app = typer.Typer(help="The embedded demo task: build and evaluate its teacher and student.", no_args_is_help=True)
