"""``edge-sdk agent --config agent.toml``: the device agent (docs/agent.md).

Runs until SIGTERM or SIGINT, then exits 0 after a clean shutdown (downloads resume at the next
start). A wrong configuration exits 1 with one line naming the file and the setting. After a
``restart`` command it executes itself again (same interpreter, same arguments, same pid, so a
supervisor sees no exit), or with ``--restart-exit`` exits 75 for systemd's ``Restart=``.
"""

from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="agent.toml")
    parser.add_argument(
        "--check", action="store_true", help="check the configuration and keys, then exit"
    )
    parser.add_argument(
        "--restart-exit",
        action="store_true",
        help="after a restart command, exit 75 instead of executing itself again",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (info)",
    )


def run(args: argparse.Namespace) -> int:
    from edge_sdk.agent.config import load_agent_config

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = load_agent_config(args.config)
    if args.check:
        from edge_sdk.agent.config import check_tls_files, load_trust

        trust = load_trust(config)
        check_tls_files(config)
        print(
            f"ok: device {config.device_id} in fleet {config.fleet}, broker {config.broker}, "
            f"store {config.store}, {len(trust)} trusted key(s)"
        )
        return 0
    from edge_sdk.agent.mqtt import RESTART_EXIT_STATUS, MqttAgent

    status = MqttAgent(config).run()
    if status == RESTART_EXIT_STATUS and not args.restart_exit:
        import os
        import sys

        log = logging.getLogger("edge_sdk.agent")
        # The process's own command line (sys.orig_argv), not the argv given to main(): an
        # application that embeds main(["agent", ...]) passes --restart-exit instead.
        argv = [sys.executable, *sys.orig_argv[1:]]
        log.info("restarting (a restart command): %s", " ".join(argv))
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execv(sys.executable, argv)
        except OSError as exc:
            # An interpreter replaced under us (an upgrade): exit for the supervisor instead.
            log.error("could not execute the agent again (%s); exiting with %d", exc, status)
    return status
