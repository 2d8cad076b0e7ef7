"""`loupe` commands for the review app and its users (issue 7): review, users.

    loupe review [--db URL] [--image-root DIR] [--host 127.0.0.1] [--port 8000]
    loupe review export --feedback FILE [--product NAME] [--csv FILE] [--json FILE] [--db URL]
    loupe users add USERNAME [--role reviewer|admin] [--password PW] [--db URL]
    loupe users list [--db URL]
    loupe users set-password USERNAME [--password PW] [--db URL]

--db defaults to the results store's default URL (sqlite:///$LOUPE_HOME/results/results.db);
--image-root to the store's default (`images/` next to a SQLite file). Without --password,
the password is asked for twice on the terminal.

Registered on the main app by `flows.cli`; heavy imports stay inside the commands so
that `loupe --help` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

_DB_HELP = "Results store database URL (default: sqlite:///$LOUPE_HOME/results/results.db)."
_ROOT_HELP = "Image root of the store (default: images/ next to a SQLite database, else $LOUPE_HOME/results/images)."


def _password(password: Optional[str]) -> str:
    if password is not None:
        return password
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `loupe` app."""
    review_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                             help="The review app for flagged defects (serve it, or export verdicts).")
    users_app = typer.Typer(no_args_is_help=True, help="Users of the review app (reviewer or admin).")
    app.add_typer(review_app, name="review")
    app.add_typer(users_app, name="users")

    @review_app.callback()
    def review(
        ctx: typer.Context,
        db: Optional[str] = typer.Option(None, "--db", help=_DB_HELP),
        image_root: Optional[Path] = typer.Option(None, "--image-root", help=_ROOT_HELP),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. Other machines can connect only if you "
                                 "pass e.g. 0.0.0.0; put TLS in front then."),
        port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    ) -> None:
        """Serve the review app: queue, item pages with heatmaps, verdicts, dashboard, exports (login required)."""
        ctx.obj = {"db": db, "image_root": image_root}
        if ctx.invoked_subcommand is not None:
            return
        from flows.cli import _cli_errors

        with _cli_errors():
            from inference.review.serve import serve
            from inference.review.users import list_users
            from inference.store import ResultsStore

            store = ResultsStore(db, image_root)
            with store.session() as s:
                n_users = len(list_users(s))
            store.close()
            if n_users == 0:
                raise ValueError(f"no users in {store.url}: create one first with `loupe users add NAME --role admin"
                                 + (f" --db {db}`" if db else "`"))
            typer.echo(f"review app on http://{host}:{port}/ over {store!r} (Ctrl+C stops it)")
            serve(db, image_root, host=host, port=port)

    @review_app.command("export")
    def review_export(
        ctx: typer.Context,
        feedback: Optional[Path] = typer.Option(None, "--feedback", help="Write the feedback manifest (standing verdicts; "
                                                "false alarms -> good training set, defects -> labelled set) here."),
        product: Optional[str] = typer.Option(None, "--product", help="Product name recorded in the feedback manifest."),
        relative: bool = typer.Option(False, "--relative", help="Image paths relative to the manifest file instead of absolute."),
        csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write every verdict (audit trail, undone ones too) as CSV."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write every verdict as JSON."),
        db: Optional[str] = typer.Option(None, "--db", help=_DB_HELP),
        image_root: Optional[Path] = typer.Option(None, "--image-root", help=_ROOT_HELP),
    ) -> None:
        """Export verdicts: the feedback manifest for retraining, and/or the verdict audit trail (CSV, JSON)."""
        from flows.cli import _cli_errors

        parent = ctx.obj or {}
        db = db or parent.get("db")
        image_root = image_root or parent.get("image_root")
        with _cli_errors():
            if feedback is None and csv_out is None and json_out is None:
                raise ValueError("nothing to export: pass --feedback FILE, --csv FILE and/or --json FILE")
            from inference.review import verdicts as vd
            from inference.store import ResultsStore
            from pipeline.atomic import write_json_atomic, write_text_atomic

            store = ResultsStore(db, image_root)
            try:
                with store.session() as s:
                    if feedback is not None:
                        path, n = vd.write_feedback_manifest(s, store.image_root, feedback, product=product, relative=relative)
                        typer.echo(f"feedback manifest: {path} ({n} items)")
                    if csv_out is not None or json_out is not None:
                        rows = vd.verdict_rows(s)
                        if csv_out is not None:
                            write_text_atomic(csv_out, vd.rows_to_csv(rows))
                            typer.echo(f"verdicts CSV: {csv_out} ({len(rows)} rows)")
                        if json_out is not None:
                            write_json_atomic(json_out, {"verdicts": rows})
                            typer.echo(f"verdicts JSON: {json_out} ({len(rows)} rows)")
            finally:
                store.close()

    @users_app.command("add")
    def users_add(
        username: str = typer.Argument(..., help="Login name (letters, digits, _ . @ -)."),
        role: str = typer.Option("reviewer", "--role", help="reviewer | admin (admins also manage users and may undo "
                                 "anyone's verdict)."),
        password: Optional[str] = typer.Option(None, "--password", help="The password (default: asked twice; avoid this "
                                               "option on shared machines, it lands in the shell history)."),
        db: Optional[str] = typer.Option(None, "--db", help=_DB_HELP),
    ) -> None:
        """Create a review-app user with a bcrypt-hashed password."""
        from flows.cli import _cli_errors

        with _cli_errors():
            from inference.review.users import add_user, validate_role, validate_username
            from inference.store import ResultsStore

            validate_username(username)
            validate_role(role)
            pw = _password(password)
            store = ResultsStore(db)
            try:
                with store.session() as s:
                    add_user(s, username, pw, role)
            finally:
                store.close()
        typer.echo(f"added {role} {username} to {store.url}")

    @users_app.command("set-password")
    def users_set_password(
        username: str = typer.Argument(..., help="Existing login name."),
        password: Optional[str] = typer.Option(None, "--password", help="The new password (default: asked twice)."),
        db: Optional[str] = typer.Option(None, "--db", help=_DB_HELP),
    ) -> None:
        """Replace a user's password (ends that user's open sessions)."""
        from flows.cli import _cli_errors

        with _cli_errors():
            from inference.review.users import set_password
            from inference.store import ResultsStore

            pw = _password(password)
            store = ResultsStore(db)
            try:
                with store.session() as s:
                    set_password(s, username, pw)
            finally:
                store.close()
        typer.echo(f"password of {username} changed")

    @users_app.command("list")
    def users_list(db: Optional[str] = typer.Option(None, "--db", help=_DB_HELP)) -> None:
        """List the review-app users and their roles."""
        from flows.cli import _cli_errors

        with _cli_errors():
            from inference.review.users import list_users
            from inference.store import ResultsStore

            store = ResultsStore(db)
            try:
                with store.session() as s:
                    users = [(u.username, u.role, u.created_at) for u in list_users(s)]
            finally:
                store.close()
        if not users:
            typer.echo("no users yet; add one with `loupe users add NAME --role admin`")
        for name, role, created in users:
            typer.echo(f"{name:<24} {role:<9} created {created:%Y-%m-%d %H:%M} UTC")
