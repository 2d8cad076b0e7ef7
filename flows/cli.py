"""The `loupe` command line (placeholder until the CLI lands)."""
import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command()
def version() -> None:
    """Print the installed Loupe version."""
    from importlib.metadata import version as v

    typer.echo(v("loupe"))
