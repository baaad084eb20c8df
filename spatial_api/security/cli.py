"""``geotwin keys create|list|revoke``: API keys for people and platforms.

The commands load only what they run (the database, the key store, the audit log) so that
`geotwin --help` starts fast: their imports are inside them on purpose.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import typer
from rich.console import Console
from rich.table import Table

from spatial_api.security.roles import ROLES

keys_app = typer.Typer(help="API keys: create (shown once), list, revoke. Roles: " + ", ".join(ROLES),
                       no_args_is_help=True)
console = Console(soft_wrap=True)


def _fail(message: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {message}")
    raise typer.Exit(1)


def _audit(conn, action: str, target: str, detail: dict) -> None:
    from spatial_api.config import author_default
    from spatial_api.security.audit import Entry, record

    record(conn, Entry(datetime.now(timezone.utc), author_default(), "admin", "cli", action, target, detail=detail))


@keys_app.command("create")
def create(name: str = typer.Argument(..., help="Who or what uses the key, e.g. 'zhang.wei' or 'city-brain'."),
           role: str = typer.Option(..., "--role", help=" | ".join(ROLES)),
           rate: int = typer.Option(6000, "--rate", help="Requests per minute allowed (per server process)."),
           community: str = typer.Option(None, "--community",
                                         help="The community of a community-worker key (required for that role): "
                                              "the households it may see, e.g. 坂田社区."),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Create a key and print it once: store it now, it cannot be shown again."""
    from spatial_api import db
    from spatial_api.config import author_default
    from spatial_api.security import keys

    try:
        with db.transaction() as conn:
            key = keys.create(conn, name, role, created_by=author_default(), rate_per_min=rate, community=community)
            _audit(conn, "key-create", f"keys/{key.split('_')[1]}",
                   {"name": name, "role": role, "rate_per_min": rate, **({"community": community} if community else {})})
    except keys.KeyError_ as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps({"key": key, "key_id": key.split("_")[1], "name": name, "role": role,
                          **({"community": community.strip()} if community else {})}, ensure_ascii=False))
    else:
        where = f", community {community.strip()}" if community else ""
        console.print(f"key for [bold]{name}[/] (role {role}{where}, id {key.split('_')[1]}) — shown only now:")
        print(key)


@keys_app.command("list")
def list_(all_: bool = typer.Option(False, "--all", help="Include revoked keys."),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """The keys (ids, names, roles, limits; never the keys themselves)."""
    from spatial_api import db
    from spatial_api.security import keys

    with db.connect() as conn:
        rows = keys.listing(conn, include_revoked=all_)
    if as_json:
        print(json.dumps([{**r.__dict__, "created_at": r.created_at.isoformat(),
                           "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None} for r in rows],
                         ensure_ascii=False))
        return
    table = Table("id", "name", "role", "community", "per min", "created", "by", "revoked")
    for r in rows:
        table.add_row(r.key_id, r.name, r.role, r.community or "", str(r.rate_per_min),
                      f"{r.created_at:%Y-%m-%d %H:%M}", r.created_by,
                      f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "")
    console.print(table)


@keys_app.command("revoke")
def revoke(key_id: str = typer.Argument(..., help="The key's id (from `geotwin keys list`).")) -> None:
    """Revoke a key: running servers refuse it within seconds."""
    from spatial_api import db
    from spatial_api.config import author_default
    from spatial_api.security import keys

    try:
        with db.transaction() as conn:
            rec = keys.revoke(conn, key_id, revoked_by=author_default())
            _audit(conn, "key-revoke", f"keys/{key_id}", {"name": rec.name, "role": rec.role})
    except keys.KeyError_ as exc:
        _fail(str(exc))
    console.print(f"revoked key {key_id} ({rec.name}, {rec.role})")
