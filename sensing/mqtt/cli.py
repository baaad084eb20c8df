"""``geotwin mqtt``: geotwin's own broker (Debian's mosquitto) and the ingestion worker.

Imports of the project's modules sit inside the command bodies (``geotwin --help`` starts fast)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

app = typer.Typer(help="The MQTT broker (Debian's mosquitto) and the ingestion worker.", no_args_is_help=True)

#: The worker's client id unless told otherwise; `up` makes its session so that nothing published
#: before the worker first runs is lost.
DEFAULT_WORKER = "geotwin-worker-1"


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@app.command()
def up() -> None:
    """Write the broker's configuration and users (from mqtt_credentials), start it unless it runs
    (then reload its users). Idempotent."""
    from sensing.mqtt import control
    from sensing.mqtt.broker import BrokerError

    try:
        broker, started = control.up(worker_session=DEFAULT_WORKER)
    except BrokerError as exc:
        _fail(str(exc))
    except Exception as exc:  # the database is not there: say what to do
        import psycopg

        if isinstance(exc, psycopg.Error):
            _fail(f"cannot read the broker's users from the database: {str(exc).strip()}. "
                  "Run `geotwin db up` first.")
        raise
    st = broker.status()
    typer.echo(f"● mosquitto {'started' if started else 'running (users reloaded)'} on {st.host}:{st.port} "
               f"(pid {st.pid}, folder {st.folder})")


@app.command()
def down() -> None:
    """Stop the broker (it saves its persistent sessions and queued messages first)."""
    from sensing.mqtt.broker import LocalBroker

    typer.echo("stopped" if LocalBroker().down() else "not running")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Is the broker running: pid, port, folder (exit 1 when it is not)."""
    from sensing.mqtt.broker import LocalBroker

    st = LocalBroker().status()
    info = {"running": st.running, "pid": st.pid, "host": st.host, "port": st.port, "folder": str(st.folder),
            "schema": st.schema}
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        typer.echo(f"{'running' if st.running else 'not running'}" + (f", pid {st.pid}" if st.pid else "")
                   + f", port {st.port} on {st.host}, folder {st.folder}")
    if not st.running:
        raise typer.Exit(1)


@app.command()
def sync() -> None:
    """Rewrite the password file and ACL from mqtt_credentials and reload the broker."""
    from sensing.mqtt import credentials

    typer.echo("reloaded" if credentials.sync() else "no local broker serves this schema (run `geotwin mqtt up`)")


@app.command()
def worker(
    client_id: str = typer.Option(DEFAULT_WORKER, help="The persistent session's client id: keep it fixed "
                                                           "(each worker its own)."),
    batch_size: int = typer.Option(2000, min=1, max=50000, help="Messages per transaction at most."),
    batch_ms: int = typer.Option(50, min=1, max=60000, help="Milliseconds a batch waits to fill at most."),
    notify: bool = typer.Option(True, help="Publish the stored Observations to STA subscribers."),
    notify_qos: int = typer.Option(1, min=0, max=1, help="QoS of the notifications."),
    stats_every: float = typer.Option(0, help="Log counters every N seconds (0: never)."),
    hook: Annotated[list[str] | None, typer.Option(
        "--hook", help="module:function called once at start, e.g. to register after-batch hooks "
                       "(sensing.mqtt.worker.after_batch_hooks).")] = None,
    shared: bool = typer.Option(False, help="Join the shared subscription $share/geotwin/… (several workers; "
                                            "mosquitto 2.0.11 loses shared subscriptions over a broker restart "
                                            "until the worker reconnects — see sensing/mqtt/worker.py)."),
    rules: bool = typer.Option(True, help="Evaluate the alert rules of the devices of each stored batch "
                                          "(sensing.rules:install_worker_hooks) and every --rules-every seconds "
                                          "for the time-based ones (no data, inactivity, baseline)."),
    rules_every: float = typer.Option(60, min=1, help="Seconds between evaluations of every rule (with --rules)."),
) -> None:
    """The ingestion worker: store Observations published to v1.1/Datastreams(<id>)/Observations,
    exactly once, in batches. Runs until SIGTERM / Ctrl-C."""
    import logging
    import signal
    import threading

    from sensing.mqtt.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import importlib

    for spec in hook or []:
        module, _, name = spec.partition(":")
        try:
            getattr(importlib.import_module(module), name)()
        except (ImportError, AttributeError, ValueError) as exc:
            _fail(f"--hook {spec!r}: {exc} (give module:function, e.g. sensing.rules:install_worker_hooks)")
    if rules:
        from sensing import rules as sensing_rules

        sensing_rules.install_worker_hooks()
    w = Worker(client_id=client_id, batch_size=batch_size, batch_ms=batch_ms, notify=notify, notify_qos=notify_qos,
               shared=shared)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    w.start()
    if rules:
        from sensing import notify as sensing_notify
        from spatial_api.config import get_settings

        periodic = threading.Thread(target=sensing_rules.run_periodic, name="geotwin-rules", daemon=True,
                                    args=(get_settings(), rules_every, stop),
                                    kwargs={"notifiers": sensing_notify.notifiers_from_env()})
        periodic.start()
    log = logging.getLogger("geotwin.sensing.mqtt")
    while not stop.wait(stats_every or 3600):
        if stats_every:
            s = w.stats
            log.info("received %d stored %d duplicates %d dead %d batches %d", s.received, s.stored,
                     s.duplicates, s.dead, s.batches)
    w.stop()
