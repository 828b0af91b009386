"""``corolla dht``: a bootstrap peer that others join through."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("dht", help="run a bootstrap DHT peer and print its multiaddrs",
                       description="Run a DHT peer that servers and clients join with --initial-peers.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    p.add_argument("--announce-host", default=None, help="public address to announce to other peers")
    p.add_argument("--identity", default=None, metavar="FILE",
                   help="private key file (created if missing); keeps this peer's id (and so its multiaddr) "
                        "stable across restarts")
    p.add_argument("--initial-peers", nargs="*", default=[], metavar="MADDR", help="join an existing DHT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from corolla.shutdown import STOP, on_stop_signals
    from corolla.swarm.dht import start_dht, visible_maddrs

    announce = [f"/ip4/{args.announce_host}/tcp/{args.port}"] if args.announce_host else None
    on_stop_signals(interrupt=True)  # a stop while the DHT starts interrupts it (its child gets default handlers)
    dht = start_dht(args.initial_peers, host_maddrs=[f"/ip4/{args.host}/tcp/{args.port}"],
                    announce_maddrs=announce, identity_path=args.identity)
    try:
        on_stop_signals()  # from now on a stop just ends the wait below
        print("DHT peer running. Join it with:", flush=True)
        print("  --initial-peers " + " ".join(visible_maddrs(dht)), flush=True)
        STOP.wait()
    finally:
        dht.shutdown()  # its peers notice the connection close; hivemind waits 3 s, then terminates it
    return 0

