"""Commands: ``serve`` (the remote side) and ``cert info|update`` (its TLS certificate)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from ..errors import InvalidInput
from ..server.app import DEFAULT_LISTEN, ServerInfo, ServerOptions, parse_listen, run_server
from ..server.delay import MAX_RESPONSE_DELAY, check_response_delay
from ..tls import CertPaths, cert_info, generate_certificate
from ..units import parse_duration
from .common import get_paths, output_format_option, print_json, run_async, warn


def _setup_logging(access_log: str | None, verbose: bool) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    root = logging.getLogger("asyncsync")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    access = logging.getLogger("asyncsync.access")
    if access_log not in (None, "-"):
        assert access_log is not None
        fh = logging.FileHandler(access_log)
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        access.addHandler(fh)
        access.propagate = False


def _response_delay(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """``--response-delay``: a duration in seconds, or a usage error naming the option."""
    try:
        # no field prefix: click's message names the option already
        return check_response_delay(parse_duration(value, field=""), field="")
    except InvalidInput as exc:
        raise click.BadParameter(exc.message) from exc


@click.command("serve")
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    help="ADDR:PORT to listen on ([v6addr]:PORT for IPv6; ':PORT' for every interface; port 0: any free).",
)
@click.option(
    "--cert",
    "cert",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PEM certificate (default: proxy.pem in the config folder, made on first start).",
)
@click.option(
    "--key",
    "key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PEM private key belonging to --cert (default: proxy.key in the config folder).",
)
@click.option("--no-tls", is_flag=True, help="Plain HTTP: only for benchmarks and trusted links.")
@click.option(
    "--access-log",
    default=None,
    metavar="FILE",
    help="Write the access log to FILE (default: standard error; '-' for standard error).",
)
@click.option("--no-access-log", is_flag=True, help="Do not log each request.")
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds in-flight requests get to finish after SIGTERM/SIGINT.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Close connections whose request headers are not complete within this many seconds (0: off).",
)
@click.option("--no-scheduler", is_flag=True, help="Serve only: do not run scheduled sync jobs.")
@click.option(
    "--response-delay",
    default="0",
    show_default=True,
    metavar="DURATION",
    callback=_response_delay,
    help="For benchmarks and tests: hold every HTTP response back this long (e.g. 25ms, at most "
    f"{MAX_RESPONSE_DELAY:g}s), like a link with that much added latency. 0: off.",
)
@click.option(
    "--no-listing-cache",
    is_flag=True,
    help="Build every snapshot listing from the datastore's folders; by default answers are kept "
    "in memory and dropped when inotify reports a change (never on NFS, SMB, FUSE or overlayfs).",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def serve(
    listen: str,
    cert: Path | None,
    key: Path | None,
    no_tls: bool,
    access_log: str | None,
    no_access_log: bool,
    shutdown_timeout: float,
    header_timeout: float,
    no_scheduler: bool,
    response_delay: float,
    no_listing_cache: bool,
    verbose: bool,
) -> None:
    """Serve every configured datastore to remotes over HTTPS until SIGTERM/SIGINT.

    Prints 'listening on URL, fingerprint FP' once ready: give the fingerprint
    to the machines that pull from here.
    """
    paths = get_paths()
    host, port = parse_listen(listen)
    if (cert is None) != (key is None):
        raise click.UsageError("--cert and --key go together")
    certs = CertPaths(cert, key) if cert is not None and key is not None else None
    if no_tls:
        warn("serving plain HTTP (--no-tls): credentials and data cross the network unencrypted")
    _setup_logging(access_log, verbose)
    options = ServerOptions(
        access_log=not no_access_log,
        shutdown_timeout=shutdown_timeout,
        header_timeout=header_timeout,
        scheduler=not no_scheduler,
        response_delay=response_delay,
        listing_cache=not no_listing_cache,
    )

    def ready(info: ServerInfo) -> None:
        click.echo(info.describe())
        sys.stdout.flush()

    run_async(
        lambda: run_server(paths, host, port, tls=not no_tls, ready=ready, cert=certs, options=options),
        transfer=False,
    )


@click.group("cert")
def cert() -> None:
    """The server's TLS certificate (proxy.pem / proxy.key in the config folder)."""


@cert.command("info")
@output_format_option
def info(output_format: str) -> None:
    """Show subject, validity and SHA-256 fingerprint of the server certificate."""
    ci = cert_info(CertPaths.default(get_paths()).cert)
    if output_format != "text":
        print_json(ci.to_json(), output_format)
        return
    fmt = "%Y-%m-%d %H:%M:%S UTC"
    click.echo(f"Subject: {ci.subject}")
    click.echo(f"Issuer: {ci.issuer}")
    click.echo("Validity:")
    click.echo(f"    Not Before: {ci.not_before.strftime(fmt)}")
    click.echo(f"    Not After : {ci.not_after.strftime(fmt)}")
    if ci.san:
        click.echo(f"Subject Alternative Names: {', '.join(ci.san)}")
    click.echo(f"Public key: {ci.public_key}")
    click.echo(f"Fingerprint (sha256): {ci.fingerprint}")


@cert.command("update")
@click.option("--hostname", default=None, help="Name for the certificate (default: this host's name).")
@click.option(
    "--days", type=click.IntRange(min=1, max=36500), default=3650, show_default=True, help="Validity in days."
)
def update(hostname: str | None, days: int) -> None:
    """Make a new self-signed certificate and key (replacing the old ones).

    Remotes that pinned the old fingerprint must be given the new one; a
    running server uses the new certificate after a restart.
    """
    ci = generate_certificate(CertPaths.default(get_paths()), hostname=hostname, days=days)
    click.echo(f"Fingerprint (sha256): {ci.fingerprint}")
    warn("restart 'asyncsync serve' and update the fingerprint on every machine that pulls from here")


commands: list[click.Command] = [serve, cert]
