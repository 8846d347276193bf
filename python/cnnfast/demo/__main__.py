"""python -m cnnfast.demo: serve the demo page on this machine (see cnnfast.demo and --help)."""

from __future__ import annotations

import argparse
import ipaddress
import signal
import socket
import sys
import textwrap

import numpy as np

from .. import datasets
from .._cli import (
    Interrupted,
    add_data_arguments,
    add_model_argument,
    argument_parser,
    check_model_arg,
    load_mnist,
    load_model,
)
from ..mnist import probabilities

HELP_WIDTH = 78
MAX_CONNECTIONS = 32  # open connections (and requests in progress) at once; beyond, 503
MISSING = "the demo needs Starlette, uvicorn and Pillow: pip install 'cnnfast[demo]'"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535 (0: any free port), got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(
        prog="python -m cnnfast.demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join(
            textwrap.fill(paragraph, HELP_WIDTH)
            for paragraph in (
                "Serve a page, on this machine, where you learn CNNs by looking: draw a digit and watch the "
                "model read it (its guess, the ten probabilities, the 28x28 image it saw, each convolution "
                "layer's feature maps, all computed by cnnfast's C++ kernels), and step the worked "
                "backpropagation example of python -m cnnfast.backprop in exact fractions beside the float32 "
                "kernels. Prints the address to open in a browser; the page needs nothing from the network.",
                "MNIST test digits (some the model reads wrong) can be loaded with one click when MNIST is "
                "found (--data-dir, $CNNFAST_DATA or the cache; the demo never downloads it).",
            )
        ),
        epilog=textwrap.fill(
            "The JSON API the page uses (POST /api/predict, POST /api/backprop, GET /api/examples) is "
            "described in the README. Needs pip install 'cnnfast[demo]'. Exit status: 1 if the model, "
            "MNIST or the address cannot be had, 2 bad arguments; 130 (143) after Ctrl-C (SIGTERM), "
            "which is how it is meant to end.",
            HELP_WIDTH,
        ),
    )
    add_model_argument(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1: this machine only; another address, such as "
        "0.0.0.0, lets other machines use the demo, and a warning says so). The demo answers requests "
        "addressed to this host, localhost, 127.0.0.1 or ::1 and, with 0.0.0.0 or ::, this machine's "
        "name and addresses; others get a 400 (a page elsewhere cannot reach it through DNS rebinding)",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests addressed to NAME (a DNS name or address this machine is reached by); repeatable",
    )
    p.add_argument("--port", type=_port, default=8000, help="the port to listen on (default 8000; 0: any free port)")
    add_data_arguments(p)
    return p


def is_local(host: str) -> bool:
    """True for a loopback address or localhost: only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(name: str) -> str:
    """`name` as it appears in a Host header without its port: lower case, IPv6 in brackets."""
    bare = name.strip().strip("[]").lower()
    return f"[{bare}]" if ":" in bare else bare


def machine_names() -> list[str]:
    """The names and addresses this machine is reached by, as far as it knows them: its host
    name, its fully qualified name, their addresses, and the address of its default route."""
    names = [socket.gethostname(), socket.getfqdn()]
    for name in names[:2]:
        try:
            names += [info[4][0] for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)]
        except OSError:
            pass
    for family, target in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:  # (connecting a UDP socket sends nothing: it only picks the route's local address)
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                names.append(probe.getsockname()[0])
        except OSError:
            pass
    return names


def allowed_hosts(host: str, extra=()) -> list[str]:
    """The Host header names the demo answers to when listening on `host`: this machine's local
    names, `host` itself, `extra`, and for a wildcard address (0.0.0.0, ::) the machine's own names
    (:func:`machine_names`). Never "*": a page elsewhere could reach the server by DNS rebinding."""
    from .server import LOCAL_HOSTS

    named = [host, *extra]
    if host.strip("[]") in ("0.0.0.0", "::", ""):
        named = [*machine_names(), *extra]
    hosts = []
    for name in (*LOCAL_HOSTS, *named):
        name = _host_name(name)
        if name and name not in hosts:
            hosts.append(name)
    return hosts


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one); OSError if that cannot be had."""
    family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


def _url(host: str, port: int) -> str:
    host = host.strip("[]")
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_model_arg(parser, args.model)
    try:
        import PIL  # noqa: F401  (the page sends PNGs)
        import uvicorn

        from .server import create_app
    except ImportError as error:
        print(f"error: {MISSING} (no module {error.name})", file=sys.stderr)
        return 1
    model = load_model(args.model)
    if model is None:
        return 1
    try:
        probabilities(model, np.zeros((1, 28, 28), np.uint8))
    except ValueError as error:
        print(f"error: the model in {args.model} does not fit 28x28 digit images: {error}", file=sys.stderr)
        return 1

    test_set = None
    if args.data_dir is not None or datasets.find_mnist() is not None:
        data = load_mnist(args.data_dir, args.no_verify)
        if data is None:
            return 1
        test_set = data[2], data[3]
    else:
        print("cnnfast: no MNIST found, so the page has no example digits (give --data-dir)", file=sys.stderr)

    try:
        sock = listen(args.host, args.port)
    except OSError as error:
        print(f"error: cannot listen on {args.host} port {args.port}: {error.strerror or error}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    local = is_local(args.host)
    hosts = allowed_hosts(args.host, args.allow_host)
    if not local:
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine on port {port} can use "
            "the demo (it reads no files and keeps nothing, but it is not meant to face a network); it "
            f"answers requests addressed to {', '.join(hosts)} (--allow-host adds a name)",
            file=sys.stderr,
        )
    app = create_app(model, test_set, allowed_hosts=hosts)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        limit_concurrency=MAX_CONNECTIONS,  # (each request may hold a body of up to api.MAX_BODY)
    )
    server = uvicorn.Server(config)
    stopped_by = []

    def stop(signum, frame):
        # Ask the server to finish, never raise: a signal that came before uvicorn put in its own
        # handlers (or that uvicorn passes on after its shutdown) would otherwise raise inside
        # asyncio's startup and could leave the server hung.
        stopped_by.append(signum)
        server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, stop)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    print(f"cnnfast demo: open {_url(shown, port)} in a browser (Ctrl-C stops it)", flush=True)
    with sock:
        server.run(sockets=[sock])
    if stopped_by:
        raise Interrupted(stopped_by[0])
    return 0


if __name__ == "__main__":
    from .._cli import run_command

    sys.exit(run_command(main))
