"""TLS for the gRPC face: server credentials that follow files on disk, and client credentials.

Files come in the `kubernetes.io/tls` Secret layout — `tls.crt` (certificate chain), `tls.key` (its
private key) and optionally `ca.crt` (the CA that signs *clients*) — so a cert-manager `Certificate`
mounted as a volume works unchanged. A client CA turns on mutual TLS: every client must then present a
certificate that CA signed, or the handshake fails.

Why dynamic credentials: cert-manager renews certificates in place (the kubelet swaps the Secret volume's
files atomically). grpcio asks a *fetcher* for the certificate configuration at every new handshake; ours
re-reads the files and hands over a new configuration only when their contents changed and form a valid
pair. Connections already open keep their session; the next connection uses the new certificate — no
restart. A half-renewed pair (new certificate, old key) is never served: the previous pair stays until
both files agree.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

from kvs2.errors import ConfigError

log = logging.getLogger(__name__)

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"


@dataclass(frozen=True)
class ServerTls:
    """Where the server's certificate, key and (for mTLS) client CA live."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def mutual(self) -> bool:
        """Clients must present a certificate signed by `client_ca`."""
        return self.client_ca is not None

    @classmethod
    def from_dir(cls, directory: Path, *, client_auth: bool = True) -> ServerTls:
        """`tls.crt` + `tls.key`, and `ca.crt` as the client CA when present and not empty.

        An empty or missing `ca.crt` (a public issuer's Secret) means TLS without client certificates;
        `client_auth=False` ignores `ca.crt` even when it is there.
        """
        ca = directory / CA_FILE
        has_ca = client_auth and ca.is_file() and ca.stat().st_size > 0
        return cls(directory / CERT_FILE, directory / KEY_FILE, ca if has_ca else None)


def server_tls_from_options(
    tls_dir: str, cert: str, key: str, client_ca: str, *, client_auth: bool = True
) -> ServerTls | None:
    """The server's TLS settings from `--tls-dir` or `--tls-cert`/`--tls-key`/`--tls-client-ca` (not both)."""
    if tls_dir and (cert or key):
        raise ConfigError("give --tls-dir or --tls-cert/--tls-key, not both")
    if tls_dir:
        tls = ServerTls.from_dir(Path(tls_dir), client_auth=client_auth)
        if client_ca:
            tls = ServerTls(tls.cert, tls.key, Path(client_ca))
    elif cert or key:
        if not (cert and key):
            raise ConfigError("--tls-cert and --tls-key go together (the certificate chain and its key)")
        tls = ServerTls(Path(cert), Path(key), Path(client_ca) if client_ca else None)
    elif client_ca:
        raise ConfigError("--tls-client-ca needs a server certificate (--tls-dir or --tls-cert/--tls-key)")
    else:
        return None
    read_material(tls)  # fail at start, with the file named, rather than at the first handshake
    return tls


@dataclass(frozen=True)
class Material:
    """The bytes of one consistent set of files."""

    cert: bytes
    key: bytes
    client_ca: bytes | None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self.key, self.cert)], self.client_ca)


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    if not data.strip():
        raise ConfigError(f"the {what} {path} is empty")
    return data


def read_material(tls: ServerTls) -> Material:
    """Read and check the files: the key must belong to the certificate, the CA must parse.

    Raises ConfigError naming the file when they do not (yet) form a usable set.
    """
    return _load(tls)[0]


def _load(tls: ServerTls) -> tuple[Material, ssl.SSLContext]:
    """The files' bytes, and a server context made from exactly those bytes (client certificates
    required when there is a client CA): what the Redis port serves with (`ServerContext`)."""
    cert = _read(tls.cert, "server certificate (tls.crt)")
    key = _read(tls.key, "server private key (tls.key)")
    ca = _read(tls.client_ca, "client CA (ca.crt)") if tls.client_ca is not None else None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # Paths, not bytes: the ssl module loads chains only from files. The bytes compared below
        # prove the files did not change between the two reads.
        # An explicit (empty) password: an encrypted key fails here instead of OpenSSL prompting on a
        # terminal. gRPC cannot use encrypted keys anyway.
        context.load_cert_chain(tls.cert, tls.key, password=b"")
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"the server certificate {tls.cert} and key {tls.key} are not a usable pair: {exc}"
        ) from exc
    if ca is not None:
        try:
            context.load_verify_locations(cadata=ca.decode("ascii", errors="replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"the client CA {tls.client_ca} holds no usable certificate: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    if tls.cert.read_bytes() != cert or tls.key.read_bytes() != key:
        raise ConfigError(f"{tls.cert} or {tls.key} changed while being read")
    return Material(cert, key, ca), context


class CertificateFetcher:
    """grpcio's certificate-configuration fetcher: called before each handshake, on a gRPC thread.

    Returns None ("keep what you have") unless the files' contents changed and are a valid set. Files
    are small and handshakes are per connection, not per call, so reading them each time is cheap and
    catches every kind of replacement (atomic symlink swaps, in-place writes, same-second edits).
    """

    def __init__(self, tls: ServerTls, current: Material) -> None:
        self._tls = tls
        self._current = current
        self._last_problem = ""

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            seen = (
                self._tls.cert.read_bytes(),
                self._tls.key.read_bytes(),
                self._tls.client_ca.read_bytes() if self._tls.client_ca is not None else None,
            )
            if seen == (self._current.cert, self._current.key, self._current.client_ca):
                return None
            material = read_material(self._tls)
        except (ConfigError, OSError) as exc:
            problem = str(exc)
            if problem != self._last_problem:  # once per distinct problem, not once per handshake
                log.warning("TLS files changed but cannot be used yet (keeping the previous ones): %s", exc)
                self._last_problem = problem
            return None
        except Exception:  # never let a bug here fail handshakes: grpcio would refuse the connection
            log.exception("reloading the TLS files failed unexpectedly; keeping the previous ones")
            return None
        self._current = material
        self._last_problem = ""
        log.info("TLS: reloaded the certificate from %s (used from the next connection on)", self._tls.cert)
        return material.configuration()


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """Credentials that reload the files on change; client certificates required when a CA is set."""
    material = read_material(tls)
    # grpcio documents None as "keep the current configuration"; its type stubs do not allow it.
    fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], CertificateFetcher(tls, material))
    return grpc.dynamic_ssl_server_credentials(
        material.configuration(),
        fetcher,
        require_client_authentication=tls.mutual,
    )


def add_port(server: grpc.aio.Server, address: str, tls: ServerTls | None) -> int:
    """Bind `address` with TLS when configured, plaintext otherwise; the bound port (0: failed)."""
    if tls is None:
        return server.add_insecure_port(address)
    port = server.add_secure_port(address, server_credentials(tls))
    log.info(
        "gRPC on %s: TLS with %s, %s",
        address,
        tls.cert,
        f"client certificates signed by {tls.client_ca} required" if tls.mutual else "no client certificates",
    )
    return port


class ServerContext:
    """TLS for asyncio servers (the Redis port) from the same files, following them like the gRPC fetcher.

    asyncio binds one `ssl.SSLContext` to a listening socket, so the context handed to it (`listening`)
    never changes; instead its SNI callback — which OpenSSL runs in every handshake, with or without a
    server name — moves the connection onto the newest context. `refresh()` runs as each connection is
    accepted, before its handshake: it re-reads the files and makes a new context when their contents
    changed and form a valid set (else the previous one stays, logged once per problem). The client CA
    travels with the context, so a rotated CA decides the next handshakes; whether client certificates
    are required at all is fixed at start (`ServerTls.mutual`).
    """

    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._material, self._context = _load(tls)
        self._context.sni_callback = self._pick
        self.listening = self._context
        self._last_problem = ""

    def _pick(self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        if connection.context is not self._context:
            connection.context = self._context

    def refresh(self) -> None:
        tls = self._tls
        try:
            seen = (
                tls.cert.read_bytes(),
                tls.key.read_bytes(),
                tls.client_ca.read_bytes() if tls.client_ca is not None else None,
            )
            current = self._material
            if seen == (current.cert, current.key, current.client_ca):
                return
            material, context = _load(tls)
        except (ConfigError, OSError) as exc:
            if str(exc) != self._last_problem:
                log.warning("TLS files changed but cannot be used yet (keeping the previous ones): %s", exc)
                self._last_problem = str(exc)
            return
        context.sni_callback = self._pick
        self._material, self._context, self._last_problem = material, context, ""
        log.info("TLS: reloaded the certificate from %s for the Redis port (next connections)", tls.cert)


def peer_identities(peercert: object) -> list[str]:
    """A verified client certificate's Common Name, then its Subject Alternative Names — the identities
    `kvs2.authz` maps to rights — from `ssl`'s `getpeercert()` dict (what gRPC reports the same way)."""
    if not isinstance(peercert, dict):
        return []
    out: list[str] = []
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName" and value not in out:
                out.append(value)
    for _kind, value in peercert.get("subjectAltName", ()):
        if value not in out:
            out.append(value)
    return out


# ----- clients -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClientTls:
    """What a client needs for TLS: the CA that signed the server (None: the system's roots), and for
    mTLS its own certificate and key; `server_name` when the certificate names the server differently
    from the address dialled (e.g. dialling a pod IP, certificate for the Service's DNS name)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--tls-cert and --tls-key go together (the client certificate and its key)")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA certificate (--tls-ca)") if self.ca else None,
            private_key=_read(self.key, "client key (--tls-key)") if self.key else None,
            certificate_chain=_read(self.cert, "client certificate (--tls-cert)") if self.cert else None,
        )

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def peer_client_tls(tls: ServerTls) -> ClientTls:
    """How a replica dials a peer of its store (snapshot bootstrap): with its own certificate as the
    client certificate, trusting the CA of `ca.crt` — in the layout cert-manager writes, the CA that issued
    every replica's certificate. Without a client CA it trusts the system's roots and sends no
    certificate (a server-TLS-only store)."""
    if tls.client_ca is None:
        return ClientTls()
    return ClientTls(ca=tls.client_ca, cert=tls.cert, key=tls.key)


def client_tls_from_options(ca: str, cert: str, key: str, server_name: str) -> ClientTls | None:
    """`--tls-ca/--tls-cert/--tls-key/--tls-server-name` → ClientTls, or None for plaintext."""
    if not (ca or cert or key or server_name):
        return None
    return ClientTls(
        ca=Path(ca) if ca else None,
        cert=Path(cert) if cert else None,
        key=Path(key) if key else None,
        server_name=server_name or None,
    )
