"""TLS certificates and fingerprints, shared by the server and the client.

A fingerprint is the SHA-256 of the DER certificate, written as 32
colon-separated lowercase hex bytes (``64:d3:ff:...``), as Proxmox shows it.
:func:`parse_fingerprint` also accepts upper case and the form without colons,
so an administrator may paste either.

The server's certificate and key live in the config folder as ``proxy.pem`` and
``proxy.key`` (key mode 0600). :func:`ensure_certificate` makes a self-signed
pair on first start; :func:`generate_certificate` replaces it.

Every function here is blocking (file I/O, key generation): async callers use
``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .config.paths import Paths
from .datastore.chunkstore import tmp_name
from .errors import InvalidInput, NotFound, RemoteError, StorageError
from .fingerprint import fingerprint_of_der, format_fingerprint, normalize_fingerprint, parse_fingerprint

CERT_FILE = "proxy.pem"
KEY_FILE = "proxy.key"
#: validity of a generated certificate
CERT_DAYS = 3650


@dataclass(frozen=True, slots=True)
class CertPaths:
    """Where a certificate and its key are."""

    cert: Path
    key: Path

    @classmethod
    def default(cls, paths: Paths) -> CertPaths:
        return cls(paths.config_file(CERT_FILE), paths.config_file(KEY_FILE))


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What ``cert info`` shows about a certificate."""

    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint: str
    san: tuple[str, ...]
    public_key: str

    def to_json(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "notbefore": self.not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "notafter": self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "fingerprint": self.fingerprint,
            "san": list(self.san),
            "public-key": self.public_key,
        }


def cert_info(cert_path: Path) -> CertInfo:
    """Read a PEM certificate; :class:`NotFound` if it does not exist."""
    try:
        pem = cert_path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no certificate at {cert_path} (start the server or run 'cert update')") from None
    except OSError as exc:
        raise StorageError(f"cannot read {cert_path}: {exc.strerror}") from exc
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise InvalidInput(f"{cert_path} is not a PEM certificate") from exc
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        san = tuple(str(v) for v in ext.value.get_values_for_type(x509.DNSName)) + tuple(
            str(v) for v in ext.value.get_values_for_type(x509.IPAddress)
        )
    except x509.ExtensionNotFound:
        san = ()
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        key_desc = f"EC {key.curve.name}"
    else:
        key_desc = type(key).__name__.removeprefix("_").replace("PublicKey", "")
        size = getattr(key, "key_size", None)
        if size:
            key_desc += f" {size} bit"
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint=fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER)),
        san=san,
        public_key=key_desc,
    )


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a temp file of ``mode`` beside ``path`` and rename it into place."""
    tmp = path.with_name(tmp_name(path.name))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc


def generate_certificate(
    target: CertPaths, *, hostname: str | None = None, days: int = CERT_DAYS
) -> CertInfo:
    """Make a new self-signed certificate and key (EC P-256) at ``target``, replacing any old pair.

    The certificate names the host name plus ``localhost``, ``127.0.0.1`` and ``::1``.
    The key is written first (mode 0600), so a crash leaves at worst a key
    without its certificate, which the next start replaces.
    """
    host = hostname or socket.gethostname() or "localhost"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, host),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "asyncsync"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(host)]
    if host != "localhost":
        alt.append(x509.DNSName("localhost"))
    alt += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    target.cert.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(target.key, key_pem, 0o600)
    _write_private(target.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_info(target.cert)


def ensure_certificate(target: CertPaths) -> CertInfo:
    """Return the certificate at ``target``, making a self-signed one if cert or key is missing."""
    if not (target.cert.exists() and target.key.exists()):
        return generate_certificate(target)
    return cert_info(target.cert)


def server_context(target: CertPaths) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2+) with the certificate and key at ``target``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(target.cert, target.key)
    except FileNotFoundError as exc:
        raise NotFound(f"certificate or key missing: {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise InvalidInput(f"cannot load certificate {target.cert} / key {target.key}: {exc}") from exc
    return ctx


def fetch_fingerprint(host: str, port: int, *, timeout: float = 10.0) -> str:
    """Connect to ``host:port`` without verification and return the fingerprint it presents.

    Used to tell the user which certificate a server really shows (never to trust it).
    """
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            ctx.wrap_socket(sock, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise RemoteError(f"cannot read the certificate of {host}:{port}: {exc}") from exc
    if not der:
        raise RemoteError(f"{host}:{port} presented no certificate")
    return fingerprint_of_der(der)


__all__ = [
    "CERT_DAYS",
    "CERT_FILE",
    "KEY_FILE",
    "CertInfo",
    "CertPaths",
    "cert_info",
    "ensure_certificate",
    "fetch_fingerprint",
    "fingerprint_of_der",
    "format_fingerprint",
    "generate_certificate",
    "normalize_fingerprint",
    "parse_fingerprint",
    "server_context",
]
