"""``edge-sdk fleet``: the operator's side of over-the-air updates.

``keygen`` makes the fleet's Ed25519 signing key, ``release`` builds and signs a release
manifest for a model (and puts the model beside it), ``verify`` checks a manifest as a device
would. Over MQTT: ``serve`` runs a release server, ``deploy`` rolls a release out (canaries,
waves, an abort threshold) with live progress, ``jobs`` shows every device's update state,
``rollback`` moves devices back with a signed downgrade. Watching: ``status`` (one table of
every device: online, models, the newest report's age, p99, error rate, temperature), ``watch``
(the same, live), ``collect`` (the telemetry collector into a SQLite store) and ``telemetry``
(reports from that store as JSON lines or CSV). Tables use rich on a terminal and plain text
otherwise; rich is imported only by the commands that draw one. Wire formats:
docs/release-manifest.md, docs/fleet-protocol.md, docs/telemetry.md; operations: docs/fleet.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from edge_sdk.cli._common import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    keygen = actions.add_parser("keygen", help="create the fleet's Ed25519 signing key")
    keygen.add_argument("--out", required=True, metavar="FILE", help="private key file (0600)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key file")

    release = actions.add_parser("release", help="build and sign a release manifest")
    release.add_argument("model", help="the model file")
    release.add_argument("--name", required=True, help="model name on the devices")
    release.add_argument("--version", required=True, type=positive_int, help="integer version")
    release.add_argument("--key", required=True, metavar="FILE", help="private key (keygen)")
    release.add_argument("--out", default=".", metavar="DIR", help="where the manifest goes")
    release.add_argument("--device", action="append", default=[], help="target device id")
    release.add_argument("--group", action="append", default=[], help="target group")
    release.add_argument("--profile", action="append", default=[], help="target device profile")
    release.add_argument(
        "--valid-days", type=positive_int, default=30, metavar="N", help="expiry (30 days)"
    )
    release.add_argument(
        "--chunk-size", type=positive_int, default=65536, metavar="BYTES", help="65536"
    )
    release.add_argument(
        "--downgrade", action="store_true", help="allow devices to go back to this version"
    )
    release.add_argument(
        "--smoke-input",
        metavar="NPZ",
        help="golden input (.npz, name -> array) the device runs before switching",
    )
    release.add_argument(
        "--smoke-expected",
        metavar="NPZ",
        help="expected outputs (.npz) for --smoke-input; compared within --atol/--rtol",
    )
    release.add_argument("--atol", type=float, default=1e-3, help="smoke test atol (1e-3)")
    release.add_argument("--rtol", type=float, default=1e-3, help="smoke test rtol (1e-3)")
    release.add_argument("--json", action="store_true", help="print one JSON document")

    serve = actions.add_parser("serve", help="serve releases to devices over MQTT")
    serve.add_argument(
        "releases", nargs="+", metavar="PATH", help="manifests, or directories of *.manifest.json"
    )
    serve.add_argument(
        "--no-shared",
        action="store_true",
        help="plain subscription (brokers without MQTT 5 shared subscriptions)",
    )
    _broker_arguments(serve, default_user="release-server")

    deploy = actions.add_parser("deploy", help="roll a release out to devices or a group")
    deploy.add_argument("release", help="the signed manifest (the model file lies beside it)")
    deploy.add_argument("--key", required=True, metavar="FILE", help="private key (keygen)")
    _target_arguments(deploy)
    deploy.add_argument("--canary", type=int, default=0, metavar="N", help="canary devices first")
    deploy.add_argument(
        "--abort-failure-rate",
        type=float,
        default=1.0,
        metavar="X",
        help="stop when this share of finished devices failed (0 < X <= 1; default 1.0)",
    )
    deploy.add_argument(
        "--wave-timeout", type=float, default=600.0, metavar="S", help="seconds per wave (600)"
    )
    deploy.add_argument("--json", action="store_true", help="print the result as JSON")
    _broker_arguments(deploy, default_user="operator")

    rollback = actions.add_parser("rollback", help="move devices back (signed downgrade)")
    rollback.add_argument("--name", required=True, help="model name")
    rollback.add_argument("--key", required=True, metavar="FILE", help="private key (keygen)")
    rollback.add_argument(
        "--to", type=positive_int, default=None, metavar="V", help="version (default: previous)"
    )
    _target_arguments(rollback)
    rollback.add_argument("--wave-timeout", type=float, default=600.0, metavar="S")
    rollback.add_argument("--json", action="store_true", help="print the result as JSON")
    _broker_arguments(rollback, default_user="operator")

    jobs = actions.add_parser("jobs", help="every device's update state, from the broker")
    jobs.add_argument("--model", default=None, help="only this model")
    jobs.add_argument("--json", action="store_true", help="print one JSON document")
    _broker_arguments(jobs, default_user="operator")

    from edge_sdk.cli import fleet_cmd

    fleet_cmd.add_arguments(actions, _broker_arguments)

    status = actions.add_parser(
        "status", help="every device: online, models, last report, p99, errors, temperature"
    )
    _view_arguments(status)
    _broker_arguments(status, default_user="operator")

    watch = actions.add_parser("watch", help="the status table, kept up to date")
    _view_arguments(watch)
    watch.add_argument(
        "--interval",
        type=_positive_float,
        default=2.0,
        metavar="S",
        help="seconds between looks (2); at most one table per interval",
    )
    watch.add_argument(
        "--count", type=positive_int, default=None, metavar="N", help="stop after N tables"
    )
    watch.add_argument(
        "--duration", type=_positive_float, default=None, metavar="S", help="stop after S seconds"
    )
    _broker_arguments(watch, default_user="operator")

    collect = actions.add_parser("collect", help="store every device's telemetry (SQLite)")
    collect.add_argument("--db", required=True, metavar="PATH", help="the store (created)")
    collect.add_argument(
        "--client-id",
        default=None,
        metavar="ID",
        help="fixed MQTT client id of the persistent session (edge-sdk-collector-FLEET)",
    )
    collect.add_argument(
        "--session-expiry",
        type=positive_int,
        default=7 * 86400,
        metavar="S",
        help="how long the broker keeps reports for a stopped collector (604800 s: 7 days)",
    )
    collect.add_argument(
        "--duration", type=_positive_float, default=None, metavar="S", help="stop after S seconds"
    )
    collect.add_argument("--json", action="store_true", help="print the totals as JSON")
    _broker_arguments(collect, default_user="operator")

    export = actions.add_parser("telemetry", help="reports from a collector's store")
    export.add_argument("--db", required=True, metavar="PATH", help="the collector's store")
    export.add_argument(
        "--device", action="append", default=None, metavar="ID", help="a device (repeatable)"
    )
    export.add_argument(
        "--since", type=_time, default=None, metavar="T", help="ISO 8601 or an age: 10m, 2h, 1d"
    )
    export.add_argument("--until", type=_time, default=None, metavar="T", help="as --since")
    export.add_argument(
        "--format",
        choices=["jsonl", "csv"],
        default="jsonl",
        help="one JSON report a line (default), or CSV with a row per model version",
    )
    export.add_argument("--json", action="store_true", help="the same as --format jsonl")
    export.add_argument(
        "--summary",
        action="store_true",
        help="per device: reports, sequence numbers, duplicates, gaps (a table, or JSON)",
    )

    verify = actions.add_parser("verify", help="check a manifest as a device would")
    verify.add_argument("manifest", help="a signed manifest (.manifest.json)")
    verify.add_argument(
        "--trust", action="append", required=True, metavar="FILE", help="a trusted public key"
    )
    verify.add_argument("--device", default="operator-check", help="device id to check for")
    verify.add_argument("--group", action="append", default=[], help="the device's groups")
    verify.add_argument("--profile", default=None, help="the device's profile")
    verify.add_argument("--active-version", type=positive_int, default=None, metavar="N")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _time(text: str) -> float:
    from edge_sdk.fleet_telemetry import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _view_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", action="append", default=None, metavar="ID", help="only this device"
    )
    parser.add_argument("--group", default=None, help="only the devices of this group")
    parser.add_argument(
        "--db",
        default=None,
        metavar="PATH",
        help="a collector's store: its newest report for devices with no newer one retained",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", action="append", default=[], metavar="ID", help="a device (repeatable)"
    )
    parser.add_argument("--group", default=None, help="every device of a group")


def _broker_arguments(parser: argparse.ArgumentParser, *, default_user: str) -> None:
    group = parser.add_argument_group("broker (also from EDGE_SDK_BROKER, EDGE_SDK_FLEET, ...)")
    group.add_argument(
        "--broker",
        default=os.environ.get("EDGE_SDK_BROKER"),
        metavar="URL",
        help="mqtt://host:port or mqtts://host:port (EDGE_SDK_BROKER)",
    )
    group.add_argument(
        "--fleet", default=os.environ.get("EDGE_SDK_FLEET"), help="fleet name (EDGE_SDK_FLEET)"
    )
    group.add_argument(
        "--username",
        default=os.environ.get("EDGE_SDK_MQTT_USERNAME", default_user),
        help=f"MQTT user (EDGE_SDK_MQTT_USERNAME, default {default_user})",
    )
    group.add_argument(
        "--password-file",
        default=None,
        metavar="FILE",
        help="file holding the MQTT password (else EDGE_SDK_MQTT_PASSWORD)",
    )
    group.add_argument("--ca", default=None, metavar="FILE", help="CA certificates (TLS)")
    group.add_argument("--cert", default=None, metavar="FILE", help="client certificate (TLS)")
    group.add_argument("--tls-key", default=None, metavar="FILE", help="client key (TLS)")
    group.add_argument("--protocol", choices=["5", "3.1.1"], default="5", help="MQTT version")


def _settings(
    args: argparse.Namespace,
    role: str,
    *,
    client_id: str | None = None,
    session_expiry: int | None = None,
) -> tuple[object, str]:
    import secrets

    from edge_sdk._mqtt_url import parse_broker_url
    from edge_sdk.errors import FleetError

    if not args.broker:
        raise FleetError("no broker: give --broker mqtt://host:port or set EDGE_SDK_BROKER")
    if not args.fleet:
        raise FleetError("no fleet: give --fleet NAME or set EDGE_SDK_FLEET")
    try:
        parse_broker_url(args.broker)
    except ValueError as exc:
        raise FleetError(f"--broker: {exc}") from None
    password = os.environ.get("EDGE_SDK_MQTT_PASSWORD")
    if args.password_file:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise FleetError(f"--password-file {args.password_file}: {exc}") from None
    from edge_sdk._mqtt import BrokerSettings

    settings = BrokerSettings(
        url=args.broker,
        # Unique: two operators with one client id would kick each other off the broker. A
        # collector's is fixed instead: its persistent session is found again by the id.
        client_id=client_id or f"edge-sdk-{role}-{secrets.token_hex(4)}",
        session_expiry=session_expiry,
        username=args.username,
        password=password,
        ca_file=args.ca,
        cert_file=args.cert,
        key_file=args.tls_key,
        protocol=5 if args.protocol == "5" else 4,
        max_inflight=1000 if role == "release-server" else 20,
        # A release server's queue holds chunks (64 KiB each): 1024 of them bound it to 64 MiB.
        max_queued=1024 if role == "release-server" else 10_000,
    )
    return settings, args.fleet


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _show_table(
    rows: list[list[str]], *, title: str | None = None, numeric: tuple[int, ...] = ()
) -> None:
    """A table: drawn by rich on a terminal, else plain aligned text (``_print_table``): no
    escape sequences in a pipe or a file."""
    if not sys.stdout.isatty():
        if title:
            print(title)
        _print_table(rows)
        return
    from rich.console import Console

    Console().print(_rich_table(rows, title=title, numeric=numeric))


def _rich_table(
    rows: list[list[str]], *, title: str | None = None, numeric: tuple[int, ...] = ()
) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for index, name in enumerate(rows[0]):
        table.add_column(name, justify="right" if index in numeric else "left", no_wrap=True)
    for row in rows[1:]:
        table.add_row(*row)
    return table


def _result_table(result: object) -> list[list[str]]:
    from edge_sdk.fleet import RolloutResult

    assert isinstance(result, RolloutResult)
    rows = [["device", "wave", "state", "active", "reason"]]
    for device, row in sorted(result.rows.items()):
        rows.append(
            [
                device,
                str(row.wave),
                row.state,
                "-" if row.active_version is None else str(row.active_version),
                row.reason or "",
            ]
        )
    return rows


def _rollout(args: argparse.Namespace, action: str) -> int:
    import sys

    from edge_sdk import release
    from edge_sdk.fleet import DeviceRow, FleetClient

    if not args.device and not args.group:
        from edge_sdk.errors import FleetError

        raise FleetError(f"{action} to what? give --device ID or --group NAME")
    key = release.load_private_key(args.key)
    settings, fleet = _settings(args, "operator")

    def progress(row: DeviceRow) -> None:
        shown = row.percent
        percent = f" {shown:.0f}%" if isinstance(shown, int | float) else ""
        reason = f" ({row.reason})" if row.reason else ""
        print(f"  {row.device:<20} {row.state}{percent}{reason}", file=sys.stderr, flush=True)

    options = {
        "devices": args.device,
        "group": args.group,
        "wave_timeout": args.wave_timeout,
        "on_progress": progress,
    }
    with FleetClient(settings, fleet) as client:  # type: ignore[arg-type]
        if action == "deploy":
            from edge_sdk.fleet import load_release

            loaded = load_release(args.release)
            print(
                f"deploying {loaded.manifest.name} version {loaded.manifest.version} "
                f"({loaded.manifest.size} bytes)",
                file=sys.stderr,
            )
            result = client.deploy(
                loaded,
                key,
                canary=args.canary,
                abort_failure_rate=args.abort_failure_rate,
                **options,
            )
        else:
            result = client.rollback(args.name, key, to_version=args.to, **options)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        if result.rows:
            _print_table(_result_table(result))
        summary = f"{len(result.succeeded)} succeeded, {len(result.failed)} failed"
        if result.deferred:
            summary += f", {len(result.deferred)} offline (deferred)"
        if result.group_published:
            summary += f"; group {args.group} now desires version {result.version}"
        print(summary)
        if result.aborted:
            print(f"aborted: {result.aborted}")
    return 0 if result.ok else 1


def _jobs(args: argparse.Namespace) -> int:
    from edge_sdk.fleet import FleetClient, jobs_table

    settings, fleet = _settings(args, "operator")
    with FleetClient(settings, fleet) as client:  # type: ignore[arg-type]
        rows = client.job_rows(args.model)
        statuses = dict(client.statuses)
    if args.json:
        print(json.dumps({"jobs": rows, "devices": statuses}, indent=2, sort_keys=True))
        return 0
    table = jobs_table(rows)
    if len(table) == 1:
        print(f"no jobs in fleet {fleet} ({len(statuses)} device(s) known)")
        return 0
    _print_table(table)
    return 0


# --------------------------------------------------------------------------- watching


_STATUS_NUMERIC = (4, 5, 6)  # p99, errors, temperature: right-aligned in a rich table


def _open_store(path: str, *, create: bool = False) -> Any:
    from edge_sdk.fleet_telemetry import TelemetryStore

    return TelemetryStore(path, create=create)


def _status_rows(client: Any, args: argparse.Namespace, store: Any) -> list[Any]:
    reports: dict[str, Any] = {}
    if store is not None:
        for device in store.devices():
            newest = store.latest(device)
            if newest is not None:
                reports[device] = newest.report
    return list(client.status_rows(devices=args.device, group=args.group, reports=reports))


def _status_title(fleet: str, rows: list[Any]) -> str:
    online = sum(1 for row in rows if row.online)
    offline = sum(1 for row in rows if row.online is False)
    late = sum(1 for row in rows if row.late)
    title = f"fleet {fleet}: {len(rows)} device(s), {online} online, {offline} offline"
    return title + (f", {late} late" if late else "")


def _status_document(fleet: str, rows: list[Any]) -> dict[str, Any]:
    from edge_sdk.fleet_telemetry import format_time

    return {
        "fleet": fleet,
        "at": format_time(time.time()),
        "devices": [row.to_dict() for row in rows],
    }


def _status(args: argparse.Namespace) -> int:
    from edge_sdk.fleet import FleetClient
    from edge_sdk.fleet_telemetry import status_table

    settings, fleet = _settings(args, "operator")
    store = _open_store(args.db) if args.db else None
    try:
        # Retained documents come in a burst right after the subscriptions: 0.3 s of quiet
        # ends the wait (a few hundred ms on a local broker).
        with contextlib.closing(FleetClient(settings, fleet)) as client:  # type: ignore[arg-type]
            client.connect(wait=5.0, settle=0.3, telemetry=True)
            rows = _status_rows(client, args, store)
    finally:
        if store is not None:
            store.close()
    if args.json:
        print(json.dumps(_status_document(fleet, rows), indent=2, sort_keys=True))
        return 0
    if not rows:
        print(f"no devices in fleet {fleet}" + (f" group {args.group}" if args.group else ""))
        return 0
    _show_table(status_table(rows), title=_status_title(fleet, rows), numeric=_STATUS_NUMERIC)
    return 0


@contextlib.contextmanager
def _stopped_by_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``stop`` (a clean end, exit 0) while the block runs; the
    previous handlers come back after (the CLI also runs in-process, in tests)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: object) -> None:
        stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch(args: argparse.Namespace) -> int:
    import threading

    from edge_sdk.fleet import FleetClient
    from edge_sdk.fleet_telemetry import status_table

    settings, fleet = _settings(args, "operator")
    store = _open_store(args.db) if args.db else None
    done = threading.Event()
    live = sys.stdout.isatty() and not args.json
    started = time.monotonic()
    shown = 0
    last: tuple[Any, ...] | None = None
    client = FleetClient(settings, fleet)  # type: ignore[arg-type]
    try:
        with _stopped_by_signals(done.set), contextlib.ExitStack() as stack:
            stack.callback(client.close)
            client.connect(wait=5.0, settle=0.3, telemetry=True)
            display = None
            if live:
                from rich.live import Live

                display = stack.enter_context(Live(auto_refresh=False, transient=False))
            while True:
                rows = _status_rows(client, args, store)
                key = tuple(row.change_key() for row in rows)
                changed = key != last
                last = key
                if display is not None:
                    # Redrawn every interval (the ages move), counted when something changed.
                    table = _rich_table(
                        status_table(rows),
                        title=_status_title(fleet, rows),
                        numeric=_STATUS_NUMERIC,
                    )
                    display.update(table, refresh=True)
                elif changed and args.json:
                    print(json.dumps(_status_document(fleet, rows), sort_keys=True), flush=True)
                elif changed:
                    from edge_sdk.fleet_telemetry import format_time

                    print(f"{format_time(time.time())}  {_status_title(fleet, rows)}")
                    if rows:
                        _print_table(status_table(rows))
                    print(flush=True)
                shown += changed
                if args.count is not None and shown >= args.count:
                    break
                wait = args.interval
                if args.duration is not None:
                    left = args.duration - (time.monotonic() - started)
                    if left <= 0:
                        break
                    wait = min(wait, left)
                if done.wait(wait):
                    break
    finally:
        if store is not None:
            store.close()
    return 0


def _collect(args: argparse.Namespace) -> int:
    import threading

    from edge_sdk.fleet_telemetry import TelemetryCollector, summary_table

    if not args.fleet:
        from edge_sdk.errors import FleetError

        raise FleetError("no fleet: give --fleet NAME or set EDGE_SDK_FLEET")
    client_id = args.client_id or f"edge-sdk-collector-{args.fleet}"
    settings, fleet = _settings(
        args, "collector", client_id=client_id, session_expiry=args.session_expiry
    )
    store = _open_store(args.db, create=True)
    try:
        collector = TelemetryCollector(settings, fleet, store)  # type: ignore[arg-type]
        done = threading.Event()

        def stop() -> None:
            done.set()
            collector.request_stop()

        with _stopped_by_signals(stop):
            collector.start_thread()
            if not args.json:
                print(
                    f"collecting telemetry of fleet {fleet} into {args.db} (client id "
                    f"{client_id}; the broker keeps its session {args.session_expiry} s)",
                    flush=True,
                )
            try:
                done.wait(args.duration)
            finally:
                collector.stop()
        summaries = store.summary()
    finally:
        store.close()
    stats = collector.stats
    if args.json:
        document = {
            "fleet": fleet,
            "db": str(args.db),
            "stats": stats.to_dict(),
            "devices": [summary.to_dict() for summary in summaries],
        }
        print(json.dumps(document, indent=2, sort_keys=True))
        return 0
    print(
        f"stopped: {stats.stored} reports stored, {stats.duplicates} duplicates, "
        f"{stats.conflicts} conflicts, {stats.malformed} malformed, {stats.statuses} status "
        "documents",
        flush=True,
    )
    if summaries:
        _show_table(summary_table(summaries), title=f"in {args.db}")
    return 0


def _telemetry(args: argparse.Namespace) -> int:
    from edge_sdk.fleet_telemetry import summary_table

    with _open_store(args.db) as store:
        if args.summary:
            summaries = store.summary(args.device)
            if args.json:
                print(json.dumps([s.to_dict() for s in summaries], indent=2, sort_keys=True))
            elif summaries:
                _show_table(summary_table(summaries), title=f"{args.db}", numeric=(1, 5, 6))
            else:
                print(f"no reports in {args.db}" + _which(args))
            return 0
        written = 0
        reports = store.reports(devices=args.device, since=args.since, until=args.until)
        if args.format == "csv" and not args.json:
            written = _write_csv(reports)
        else:
            for stored in reports:
                sys.stdout.write(json.dumps(stored.report, sort_keys=True) + "\n")
                written += 1
        if not written:
            known = ", ".join(store.devices()) or "none"
            print(
                f"edge-sdk: no reports in {args.db}{_which(args)} (devices stored: {known})",
                file=sys.stderr,
            )
    return 0


def _which(args: argparse.Namespace) -> str:
    from edge_sdk.fleet_telemetry import format_time

    parts = []
    if args.device:
        parts.append(f"of {', '.join(args.device)}")
    if getattr(args, "since", None) is not None:
        parts.append(f"since {format_time(args.since)}")
    if getattr(args, "until", None) is not None:
        parts.append(f"until {format_time(args.until)}")
    return (" " + " ".join(parts)) if parts else ""


def _write_csv(reports: Iterable[Any]) -> int:
    import csv

    from edge_sdk.fleet_telemetry import CSV_COLUMNS, csv_rows

    writer = csv.DictWriter(sys.stdout, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    written = 0
    for stored in reports:
        for row in csv_rows(stored):
            # Booleans as JSON spells them; None as an empty cell (DictWriter's own choice).
            writer.writerow(
                {k: str(v).lower() if isinstance(v, bool) else v for k, v in row.items()}
            )
        written += 1
    return written


def _serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from edge_sdk.errors import FleetError
    from edge_sdk.fleet import ReleaseServer, load_release

    paths: list[Path] = []
    for entry in args.releases:
        path = Path(entry)
        if path.is_dir():
            paths += sorted(path.glob("*.manifest.json"))
        else:
            paths.append(path)
    if not paths:
        raise FleetError(f"no *.manifest.json in {', '.join(args.releases)}")
    releases = [load_release(path) for path in paths]
    settings, fleet = _settings(args, "release-server")
    server = ReleaseServer(settings, fleet, releases, shared=not args.no_shared)  # type: ignore[arg-type]
    done = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        done.set()
        server._stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    for loaded in releases:
        print(
            f"serving {loaded.manifest.name} version {loaded.manifest.version} "
            f"({loaded.manifest.chunk_count} chunks) to fleet {fleet}",
            flush=True,
        )
    try:
        server.serve_forever()
    finally:
        server.stop()
    print(
        f"stopped: {server.requests} requests, {server.chunks_sent} chunks, "
        f"{server.bytes_sent} bytes served, {server.dropped} chunks dropped (queue full)",
        flush=True,
    )
    return 0


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` whole or not at all: a temp file beside it, fsync, rename over it. A
    manifest half-written by a full disk or a crash must never be published."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_atomically(path: Path, text: str) -> None:
    with _replacing(path) as stream:
        stream.write(text.encode("utf-8"))


def _read(path: str, what: str) -> bytes:
    from edge_sdk.errors import KeyFormatError, ManifestFormatError

    try:
        return Path(path).read_bytes()
    except OSError as exc:
        reason = f"cannot read {path}: {exc.strerror or exc}"
        if what == "manifest":
            raise ManifestFormatError(None, reason) from None
        raise KeyFormatError(path, reason) from None


def _smoke_test(args: argparse.Namespace) -> Any:
    """The manifest's smoke test from --smoke-input/--smoke-expected, carried inline."""
    import hashlib

    from edge_sdk import release
    from edge_sdk.errors import SmokeDataError

    if (args.smoke_input is None) != (args.smoke_expected is None):
        raise SmokeDataError(
            args.smoke_input or args.smoke_expected, "give both --smoke-input and --smoke-expected"
        )
    if args.smoke_input is None:
        return None
    parts = []
    for path in (args.smoke_input, args.smoke_expected):
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise SmokeDataError(path, f"cannot read it ({exc.strerror or exc})") from None
        if len(raw) > release.MAX_INLINE_SMOKE_BYTES:
            raise SmokeDataError(
                path,
                f"{len(raw)} bytes, more than the {release.MAX_INLINE_SMOKE_BYTES} that travel "
                "inside a manifest; use a smaller golden input",
            )
        part = release.SmokeData(inline=raw, sha256=hashlib.sha256(raw).hexdigest())
        try:
            part.arrays()  # not an .npz: fail here, not later on every device
        except SmokeDataError as exc:
            raise SmokeDataError(path, exc.reason) from None
        parts.append(part)
    return release.SmokeTest(input=parts[0], expected=parts[1], atol=args.atol, rtol=args.rtol)


def _copy_model(source: Path, target: Path) -> None:
    """Put the model beside its manifest for ``serve``: streamed, synced, renamed into place."""
    import shutil

    if target.exists() and target.resolve() == source.resolve():
        return
    with _replacing(target) as out, source.open("rb") as stream:
        shutil.copyfileobj(stream, out, 1 << 20)


def run(args: argparse.Namespace) -> int:
    from edge_sdk import release
    from edge_sdk.errors import KeyFormatError

    if args.action == "serve":
        return _serve(args)
    if args.action in ("deploy", "rollback"):
        return _rollout(args, args.action)
    if args.action == "jobs":
        return _jobs(args)
    if args.action == "status":
        return _status(args)
    if args.action == "watch":
        return _watch(args)
    if args.action == "collect":
        return _collect(args)
    if args.action == "telemetry":
        return _telemetry(args)
    if args.action == "cmd":
        from edge_sdk.cli import fleet_cmd

        return fleet_cmd.run(args, _settings)

    if args.action == "keygen":
        private, public = release.generate_keypair()
        out = Path(args.out)
        try:
            release.save_private_key(private, out, overwrite=args.force)
        except FileExistsError:
            raise KeyFormatError(
                str(out), "exists already; losing a fleet key re-keys every device (--force)"
            ) from None
        public_file = out.with_name(out.name + ".pub")
        _write_atomically(public_file, release.public_key_to_base64(public) + "\n")
        print(f"key id       {release.key_id(public)}")
        print(f"private key  {out} (keep it off the devices)")
        print(f"public key   {public_file} (give it to the devices' trusted keys)")
        return 0

    if args.action == "release":
        from datetime import timedelta

        targets = release.Targets(
            devices=tuple(args.device), groups=tuple(args.group), profiles=tuple(args.profile)
        )
        smoke = _smoke_test(args)
        manifest = release.build_manifest(
            args.model,
            args.name,
            args.version,
            chunk_size=args.chunk_size,
            targets=targets,
            valid_for=timedelta(days=args.valid_days),
            downgrade=args.downgrade,
            smoke_test=smoke,
        )
        signed = release.sign(manifest, release.load_private_key(args.key))
        out = Path(args.out) / f"{args.name}-{args.version}.manifest.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        model_copy = out.with_name(f"{args.name}-{args.version}.onnx")
        _copy_model(Path(args.model), model_copy)
        _write_atomically(out, signed.to_json() + "\n")
        summary = {
            "manifest": str(out),
            "model": str(model_copy),
            "name": manifest.name,
            "version": manifest.version,
            "size": manifest.size,
            "sha256": manifest.sha256,
            "chunks": manifest.chunk_count,
            "key_id": signed.key_id,
            "expires_at": release.format_timestamp(manifest.expires_at),
        }
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            for key, value in summary.items():
                print(f"{key:<11} {value}")
        return 0

    trust = release.TrustStore(
        release.TrustedKey(release.load_public_key(_read(path, "public key"), source=path))
        for path in args.trust
    )
    text = _read(args.manifest, "manifest")
    verified = release.verify(
        text,
        trust,
        device_id=args.device,
        groups=args.group,
        profile=args.profile,
        active_version=args.active_version,
    )
    print(
        f"ok: {verified.name} version {verified.version}, {verified.size} bytes, signed by "
        f"{verified.key_id}"
    )
    return 0
