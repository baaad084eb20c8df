"""``geotwin sensing rules list|set|run|learn`` and ``geotwin sensing alerts list|show|step|dispatch``.

The operator at the command line has the database's rights (every community); steps are
authored by ``GEOTWIN_USER`` (or the login name). Times: RFC 3339, naive = district time.

Imports of the project's modules sit inside the command bodies on purpose (``geotwin --help``
starts fast)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

rules_app = typer.Typer(help="Alert rules: list, set, run (evaluate now or at a time), learn baselines.",
                        no_args_is_help=True)
alerts_app = typer.Typer(help="Alerts: list, show, step (acknowledged / visited / closed), dispatch notifications.",
                         no_args_is_help=True)
console = Console(soft_wrap=True)


def _fail(message: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"error: {message}", style="red", highlight=False, markup=False)
    raise typer.Exit(1)


def _conn():
    from spatial_api import db

    return db.connect()


def _author() -> str:
    from spatial_api.config import author_default

    return author_default()


def _instant(text: str | None, name: str):
    from spatial_api.api import time as timepolicy

    try:
        return timepolicy.parse_instant(text, name, day="end")
    except timepolicy.TimeError as exc:
        _fail(str(exc))


def _dump(data) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _guard(fn):
    from sensing.alerts import AlertError
    from sensing.rules import RuleError

    try:
        return fn()
    except (RuleError, AlertError) as exc:
        _fail(str(exc))


# ------------------------------------------------------------------------------------------ rules

@rules_app.command("list")
def rules_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """The alert rules (kind, device type, datastream, parameters, severity, who is told)."""
    from sensing import rules

    with _conn() as conn:
        rs = rules.load_rules(conn)
    if as_json:
        return _dump([r.as_dict() for r in rs])
    table = Table("rule", "on", "kind", "device type", "datastream", "params", "severity", "notify", "title")
    for r in rs:
        table.add_row(r.rule_id, "✓" if r.enabled else "–", r.kind, r.device_type or "(all)", r.observed_property or "",
                      json.dumps(r.params, ensure_ascii=False), r.severity, ",".join(r.notify), r.title)
    console.print(table)


@rules_app.command("set")
def rules_set(rule_id: str = typer.Argument(..., help="e.g. wm-inactivity (a new id creates a rule: give --kind)"),
              kind: str = typer.Option(None, "--kind", help="threshold | rate-of-change | no-data | inactivity | "
                                                            "continuous-use | baseline"),
              device_type: str = typer.Option(None, "--device-type"),
              observed_property: str = typer.Option(None, "--datastream", help="the datastream's name, e.g. 用水量"),
              param: list[str] = typer.Option(None, "--param", help="name=value (JSON value), repeatable: "
                                                                    "--param hours=10 --param min_total=0.02"),
              params_json: str = typer.Option(None, "--params", help="all parameters as a JSON object"),
              severity: str = typer.Option(None, "--severity", help="info | warning | critical"),
              notify: str = typer.Option(None, "--notify", help="comma-separated: person,family,community"),
              enable: bool = typer.Option(None, "--enable/--disable"),
              title: str = typer.Option(None, "--title"),
              description: str = typer.Option(None, "--description")) -> None:
    """Create or change a rule; only the options given change (params merge into the current ones)."""
    from sensing import rules

    params = None
    if params_json is not None:
        try:
            params = json.loads(params_json)
        except json.JSONDecodeError as exc:
            _fail(f"--params: not JSON ({exc.msg} at character {exc.pos})")
    for p in param or []:
        name, eq, value = p.partition("=")
        if not eq or not name:
            _fail(f"--param {p!r}: write name=value, e.g. --param hours=10")
        try:
            v = json.loads(value)
        except json.JSONDecodeError:
            v = value  # plain text (e.g. an operator: --param op=<)
        params = {**(params or {}), name.strip(): v}
    kwargs = {}
    if device_type is not None:
        kwargs["device_type"] = device_type
    if observed_property is not None:
        kwargs["observed_property"] = observed_property
    with _conn() as conn:
        r = _guard(lambda: rules.set_rule(
            conn, rule_id, author=_author(), kind=kind, params=params, severity=severity,
            notify=[n.strip() for n in notify.split(",") if n.strip()] if notify is not None else None,
            enabled=enable, title=title, description=description, **kwargs))
        conn.commit()
    console.print(f"[green]●[/] {r.rule_id} ({r.kind}) {json.dumps(r.params, ensure_ascii=False)}"
                  f" {'enabled' if r.enabled else 'disabled'}", highlight=False)


@rules_app.command("run")
def rules_run(at: str = typer.Option(None, "--at", help="evaluate at this time (default: now), e.g. "
                                                        "2026-11-30T21:00"),
              since: str = typer.Option(None, "--since", help="replay from this time to --at (or now)"),
              step: int = typer.Option(30, "--step", min=1, help="minutes between replayed evaluations"),
              device: list[str] = typer.Option(None, "--device", help="only this device (repeatable)"),
              rule: list[str] = typer.Option(None, "--rule", help="only this rule (repeatable; may be disabled)"),
              learn: bool = typer.Option(False, "--learn", help="relearn the baselines (4 weeks before --at) first"),
              every: float = typer.Option(None, "--every", help="keep running: evaluate every SECONDS (wall clock), "
                                                               "relearn daily, deliver notifications; Ctrl-C stops"),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Evaluate the rules once (or replay a period) and open the alerts found."""
    from datetime import timedelta

    from sensing import baseline, notify, rules

    if every is not None:
        import threading

        from spatial_api.config import get_settings

        if at or since:
            _fail("--every runs on the wall clock: leave out --at and --since")
        stop = threading.Event()
        console.print(f"evaluating every {every:g} s (Ctrl-C stops)", highlight=False)
        try:
            _guard(lambda: rules.run_periodic(get_settings(), every, stop, notifiers=notify.notifiers_from_env()))
        except KeyboardInterrupt:
            stop.set()
        return
    t = _instant(at, "--at")
    t0 = _instant(since, "--since")
    with _conn() as conn:
        now = t or conn.execute("SELECT now()").fetchone()[0]
        if learn:
            got = _guard(lambda: baseline.learn(conn, device or None, now=now))
            console.print(f"baselines: {got['devices']} device(s)")
        if t0 is not None:
            opened = _guard(lambda: rules.evaluate_history(conn, t0, now, timedelta(minutes=step),
                                                           device_ids=device or None, rule_ids=rule or None))
        else:
            opened = _guard(lambda: rules.evaluate(conn, now=now, device_ids=device or None, rule_ids=rule or None))
        conn.commit()
    if as_json:
        return _dump(opened)
    _alert_table(opened, title=f"{len(opened)} alert(s) opened")


@rules_app.command("learn")
def rules_learn(weeks: int = typer.Option(4, "--weeks", min=1, max=12),
                at: str = typer.Option(None, "--at", help="learn from the weeks before this time (default: now)"),
                device: list[str] = typer.Option(None, "--device")) -> None:
    """Learn the households' baselines (use by half-hour of the week) from their history."""
    from sensing import baseline

    with _conn() as conn:
        got = baseline.learn(conn, device or None, weeks=weeks, now=_instant(at, "--at"))
        conn.commit()
    console.print(f"[green]●[/] baselines of {got['devices']} device(s), {got['slots']} slots, "
                  f"{got['window'][0]:%Y-%m-%d %H:%M} – {got['window'][1]:%Y-%m-%d %H:%M} UTC", highlight=False)


# ----------------------------------------------------------------------------------------- alerts

def _alert_table(items: list[dict], title: str | None = None) -> None:
    table = Table("id", "opened", "state", "severity", "rule", "device", "community", "title", "on site",
                  title=title)
    for a in items:
        opened = a["opened_at"]
        opened = opened if isinstance(opened, str) else opened.isoformat()
        on_site = a.get("on_site_minutes")
        table.add_row(str(a["alert_id"]), opened[:16].replace("T", " "), a["state"], a["severity"], a["rule_id"],
                      a["device_id"], a.get("community") or "", a["title"],
                      "" if on_site is None else f"{on_site:g} min {'✓' if a.get('target_met') else '✗'}")
    console.print(table)


@alerts_app.command("list")
def alerts_list(state: str = typer.Option("active", "--state", help="open | notified | acknowledged | visited | "
                                                                     "closed | active | all"),
                community: str = typer.Option(None, "--community"),
                device: str = typer.Option(None, "--device"),
                since: str = typer.Option(None, "--since", help="changed since"),
                limit: int = typer.Option(100, "--limit", min=1, max=10000),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Alerts, newest first (default: the active ones)."""
    from sensing import alerts

    with _conn() as conn:
        items = _guard(lambda: alerts.listing(conn, state=None if state == "all" else state, community=community,
                                              device=device, since=_instant(since, "--since"), limit=limit))
    if as_json:
        return _dump(items)
    _alert_table(items)


@alerts_app.command("show")
def alerts_show(alert_id: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """One alert: its evidence and every step."""
    from sensing import alerts

    with _conn() as conn:
        a = alerts.get(conn, alert_id)
    if a is None:
        _fail(f"alert {alert_id} does not exist; `geotwin sensing alerts list --state all` shows the alerts")
    if as_json:
        return _dump(a)
    console.print(f"[bold]{a['title']}[/] #{a['alert_id']} {a['severity']} · {a['state']} · {a['device_id']} "
                  f"({a.get('community') or ''} {a.get('address') or ''})", highlight=False)
    console.print(a["message"], highlight=False, markup=False)
    console.print("evidence: " + json.dumps(a["evidence"], ensure_ascii=False), highlight=False, markup=False)
    if a["on_site_minutes"] is not None:
        console.print(f"on site after {a['on_site_minutes']:g} min "
                      f"({'within' if a['target_met'] else 'beyond'} the 15-minute target)", highlight=False)
    table = Table("#", "step", "at", "author", "note")
    for s in a["steps"]:
        table.add_row(str(s["seq"]), s["step"], s["at"][:19].replace("T", " "), s["author"], s["note"] or "")
    console.print(table)


@alerts_app.command("step")
def alerts_step(alert_id: int = typer.Argument(...),
                step: str = typer.Argument(..., help="acknowledged | visited | closed"),
                note: str = typer.Option(None, "--note", help="what happened (needed to close before a visit)")) -> None:
    """Take a step of an alert's workflow (author: GEOTWIN_USER or the login name)."""
    from sensing import alerts

    with _conn() as conn:
        a = _guard(lambda: alerts.step(conn, alert_id, step, author=_author(), note=note))
        conn.commit()
    console.print(f"[green]●[/] alert {alert_id} is {a['state']}", highlight=False)


@alerts_app.command("dispatch")
def alerts_dispatch() -> None:
    """Deliver the pending notifications (webhook: GEOTWIN_SENSING_WEBHOOK_URL, SMS gateway:
    GEOTWIN_SENSING_SMS_URL)."""
    from sensing import notify

    notifiers = notify.notifiers_from_env()
    if not notifiers:
        _fail("no notifier configured: set GEOTWIN_SENSING_WEBHOOK_URL and/or GEOTWIN_SENSING_SMS_URL")
    with _conn() as conn:
        got = notify.dispatch(conn, notifiers)
        conn.commit()
    console.print(f"sent {got['sent']}, failed {got['failed']}, alerts notified {len(got['notified'])}",
                  highlight=False)
