"""``geotwin s3 up | down | status``: the local S3 server (SeaweedFS, spatial_api.objectstore.server)."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console

s3_app = typer.Typer(help="The local S3-compatible object store (SeaweedFS) for imagery and tilesets.",
                     no_args_is_help=True)
console = Console()
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


@s3_app.command("up")
def s3_up(port: Optional[int] = typer.Option(None, "--port", help="S3 port on 127.0.0.1 (default 8333, or the last one used); "
                                                                  "the server also uses PORT+1 … PORT+4 and those + 10000."),
          bucket: Optional[str] = typer.Option(None, "--bucket", help="Bucket to create (default geotwin).")) -> None:
    """Start the local S3 server (idempotent) and create its bucket."""
    from spatial_api.config import get_settings
    from spatial_api.objectstore import ObjectStoreError
    from spatial_api.objectstore.server import local_server

    server = local_server(get_settings(), port=port)
    if bucket:
        server.bucket = bucket
    try:
        with console.status("starting the local S3 server…"):
            server.up()
    except ObjectStoreError as exc:
        _fail(str(exc))
    console.print(f"[green]●[/] S3 on {server.endpoint}, bucket {server.bucket!r} (data in {server.data_dir}; "
                  f"credentials in {server.server_file})")
    console.print(f"  write imagery there: geotwin ingest imagery FILE ... --store s3   "
                  f"(or GEOTWIN_IMAGERY_STORE=s3://{server.bucket}/imagery)")


@s3_app.command("down")
def s3_down() -> None:
    """Stop the local S3 server (its data stays)."""
    from spatial_api.config import get_settings
    from spatial_api.objectstore.server import local_server

    console.print("stopped" if local_server(get_settings()).down() else "not running")


@s3_app.command("status")
def s3_status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Is the local S3 server running; its endpoint, bucket and data size; the store in use."""
    from spatial_api import objectstore
    from spatial_api.config import get_settings
    from spatial_api.objectstore.server import local_server

    st = local_server(get_settings()).status().as_dict()
    try:
        used = objectstore.s3_settings(required=False)
        st["in_use"] = {"endpoint": used.endpoint, "bucket": used.bucket, "from": used.source} if used else None
    except objectstore.ObjectStoreError as exc:
        st["in_use"] = {"problem": str(exc)}
    if as_json:
        print(json.dumps(st, ensure_ascii=False, indent=2))
    else:
        for k, v in st.items():
            console.print(f"{k:14} {v}")
    if not st["running"]:
        raise typer.Exit(1)
