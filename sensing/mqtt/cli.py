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


def _child_command(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "spatial_api", "mqtt", *args]


def _supervise(commands: dict[str, list[str]], stop) -> None:
    """Run each command as a child process; one that exits while not stopping is started again
    (after 1 s, doubling to 30 s if it keeps failing); on ``stop``, SIGTERM to all and wait."""
    import logging
    import subprocess
    import time

    log = logging.getLogger("geotwin.sensing.mqtt")
    procs: dict[str, subprocess.Popen] = {}
    due: dict[str, float] = dict.fromkeys(commands, 0.0)
    backoff: dict[str, float] = dict.fromkeys(commands, 1.0)
    started: dict[str, float] = {}
    try:
        while not stop.is_set():
            now = time.monotonic()
            for name, cmd in commands.items():
                p = procs.get(name)
                if p is not None and p.poll() is not None:
                    log.warning("mqtt %s exited (code %s); starting it again in %.0f s", name, p.returncode,
                                backoff[name])
                    del procs[name]
                    due[name] = now + backoff[name]
                    # a child that ran a minute was healthy: start again soon; else back off
                    backoff[name] = 1.0 if now - started.get(name, now) > 60 else min(30.0, backoff[name] * 2)
                if name not in procs and now >= due[name]:
                    procs[name] = subprocess.Popen(cmd)
                    started[name] = now
                    log.info("mqtt %s started (pid %d)", name, procs[name].pid)
            stop.wait(0.5)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for name, p in procs.items():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                log.warning("mqtt %s (pid %d) did not stop within 60 s; killing it", name, p.pid)
                p.kill()


@app.command()
def worker(
    client_id: str = typer.Option(DEFAULT_WORKER, help="The persistent session's client id: keep it fixed "
                                                           "(each worker its own; with --workers M the workers "
                                                           "are <client-id>-s1 … -sM)."),
    workers: int = typer.Option(1, min=1, max=64, help="Worker processes sharing the stream ($share/geotwin/…), "
                                                       "each its own persistent session; one that dies is "
                                                       "started again (its session keeps its share meanwhile)."),
    batch_size: int = typer.Option(2000, min=1, max=50000, help="Messages per transaction at most."),
    batch_ms: int = typer.Option(50, min=1, max=60000, help="Milliseconds a batch waits to fill at most."),
    notify: bool = typer.Option(True, help="Publish the stored Observations to STA subscribers."),
    notifier: str = typer.Option("auto", help="Who publishes them: 'process' — the announcer, a process of its "
                                              "own fed by NOTIFY at each commit (`geotwin mqtt notifier`, started "
                                              "here); 'inline' — each worker after its commit; 'auto' — process "
                                              "with --workers > 1, inline with one worker."),
    notify_qos: int = typer.Option(1, min=0, max=1, help="QoS of the notifications published inline."),
    notifier_qos: int = typer.Option(0, min=0, max=1, help="QoS of the announcer's notifications."),
    stats_every: float = typer.Option(0, help="Log counters every N seconds (0: never)."),
    hook: Annotated[list[str] | None, typer.Option(
        "--hook", help="module:function called once at start, e.g. to register after-batch hooks "
                       "(sensing.mqtt.worker.after_batch_hooks).")] = None,
    shared: bool = typer.Option(False, help="Join the shared subscription $share/geotwin/… (implied by "
                                            "--workers > 1; mosquitto 2.0.11 does not restore shared "
                                            "subscriptions over a broker restart: the workers record their "
                                            "sessions and `geotwin mqtt up` restores them before devices may "
                                            "log in — see sensing/mqtt/broker.py)."),
    rules: bool = typer.Option(True, help="Evaluate the alert rules of the devices of each stored batch "
                                          "(sensing.rules:install_worker_hooks) and every --rules-every seconds "
                                          "for the time-based ones (no data, inactivity, baseline)."),
    rules_every: float = typer.Option(60, min=1, help="Seconds between evaluations of every rule (with --rules)."),
    periodic: bool = typer.Option(True, hidden=True, help="Run the periodic rule evaluation in this process "
                                                          "(with --workers M: the first worker only)."),
    child: bool = typer.Option(False, "--child", hidden=True, help="Run one worker, do not supervise."),
) -> None:
    """The ingestion worker: store Observations published to v1.1/Datastreams(<id>)/Observations,
    exactly once, in batches. Runs until SIGTERM / Ctrl-C."""
    import logging
    import signal
    import threading

    from sensing.mqtt.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if notifier not in ("auto", "process", "inline"):
        _fail(f"--notifier {notifier!r}: give process, inline or auto")
    if notifier == "auto":
        notifier = "process" if workers > 1 else "inline"
    shared = shared or workers > 1
    announce = notify and notifier == "process"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if not child and (workers > 1 or announce):
        # the supervisor: M worker processes and the announcer, each started again if it dies
        common = ["--batch-size", str(batch_size), "--batch-ms", str(batch_ms),
                  "--notify" if notify else "--no-notify", "--notifier", notifier,
                  "--notify-qos", str(notify_qos), "--stats-every", str(stats_every),
                  "--rules" if rules else "--no-rules", "--rules-every", str(rules_every),
                  "--shared" if shared else "--no-shared", "--child"]
        for spec in hook or []:
            common += ["--hook", spec]
        ids = [client_id] if workers == 1 else [f"{client_id}-s{i}" for i in range(1, workers + 1)]
        commands = {f"worker {cid}": _child_command("worker", "--client-id", cid, *common,
                                                     *([] if i == 0 else ["--no-periodic"]))
                    for i, cid in enumerate(ids)}
        if announce:
            commands["notifier"] = _child_command("notifier", "--qos", str(notifier_qos))
        logging.getLogger("geotwin.sensing.mqtt").info(
            "mqtt worker: %d worker process(es) %s%s", workers, ", ".join(ids),
            " and the announcer (notifications)" if announce else "")
        _supervise(commands, stop)
        return
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
               shared=shared, announce=announce)
    w.start()
    if rules and periodic:
        from sensing import notify as sensing_notify
        from spatial_api.config import get_settings

        periodic_thread = threading.Thread(target=sensing_rules.run_periodic, name="geotwin-rules", daemon=True,
                                           args=(get_settings(), rules_every, stop),
                                           kwargs={"notifiers": sensing_notify.notifiers_from_env()})
        periodic_thread.start()
    log = logging.getLogger("geotwin.sensing.mqtt")
    while not stop.wait(stats_every or 3600):
        if stats_every:
            s = w.stats
            log.info("received %d stored %d duplicates %d dead %d batches %d", s.received, s.stored,
                     s.duplicates, s.dead, s.batches)
    w.stop()


@app.command()
def notifier(
    qos: int = typer.Option(0, min=0, max=1, help="QoS of the notifications (0: no PUBACK per packet)."),
    client_id: str = typer.Option("", help="MQTT client id (default: geotwin-announcer-<pid>)."),
) -> None:
    """The announcer: publish the Observations that workers started with `--notifier process` store
    (they NOTIFY at each commit) to STA's MQTT topics. `geotwin mqtt worker` starts it itself;
    run it alone to announce for workers started elsewhere. Runs until SIGTERM / Ctrl-C."""
    import logging
    import signal
    import threading

    from sensing.mqtt.announce import Announcer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    a = Announcer(qos=qos, client_id=client_id or None).start()
    log = logging.getLogger("geotwin.sensing.mqtt")
    if a.wait_listening(60):
        log.info("mqtt announcer listening (schema %s, QoS %d)", a.schema, qos)
    stop.wait()
    a.stop()
    log.info("mqtt announcer: %d observation(s) announced (%d caught up)", a.published, a.caught_up)
