"""gRPC TLS, mTLS, certificate rotation and the authorization map, over a real gRPC server on loopback.

The replica's own servicer and store (with the fake producer of conftest.py), bound with
`kvs2.credentials.add_port` and guarded by `kvs2.authz` exactly as `kvs2 serve` does; certificates are
made per test by tests/harness/pki.py. Kafka is not involved (tests/integration/security covers that).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from kvs2._proto import kvs2_pb2_grpc as pb_grpc
from kvs2.authz import AuthorizationInterceptor, Policy, parse_entries, policy_from_options
from kvs2.client import AsyncClient
from kvs2.config import Limits, ServeSettings
from kvs2.core import Store
from kvs2.credentials import ClientTls, ServerTls, add_port, server_tls_from_options
from kvs2.errors import ConfigError
from kvs2.progress import Progress, Snapshot
from kvs2.server import Kvs2Servicer
from kvs2.storage import Replica, TopicIdentity

from tests.harness.pki import CertificateAuthority, Leaf, write_tls_dir
from tests.unit.conftest import FakeWriter

HOST = "127.0.0.1"


@dataclass
class Pki:
    tmp: Path
    server_ca: CertificateAuthority
    client_ca: CertificateAuthority

    def server_dir(self, *, mutual: bool) -> Path:
        leaf = self.server_ca.issue(
            "kvs2 server", dns=("localhost", "kvs2.example"), ips=(HOST,), client=False
        )
        return write_tls_dir(self.tmp / "server", leaf, self.client_ca if mutual else None)

    def client(
        self, name: str, ca: CertificateAuthority | None = None, uris: tuple[str, ...] = ()
    ) -> ClientTls:
        leaf = (ca or self.client_ca).issue(name, server=False, uris=uris)
        cert, key = leaf.write(self.tmp / f"client-{name}.crt", self.tmp / f"client-{name}.key")
        return ClientTls(ca=self.server_ca.write(self.tmp / "server-ca.crt"), cert=cert, key=key)

    def anonymous(self) -> ClientTls:
        return ClientTls(ca=self.server_ca.write(self.tmp / "server-ca.crt"))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path, CertificateAuthority("server CA"), CertificateAuthority("client CA"))


Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """`await serve(tls, policy)` → the address of a replica servicer bound like `kvs2 serve` binds it."""
    servers: list[grpc.aio.Server] = []
    replicas: list[Replica] = []

    async def start(tls: ServerTls | None, policy: Policy | None) -> str:
        replica = Replica(tmp_path / f"db{len(replicas)}", map_size=1 << 22)
        replicas.append(replica)
        replica.reset(TopicIdentity("t", "id", 1))
        progress = Progress(asyncio.get_running_loop())
        progress.update(Snapshot(serving=True, partitions=1, topic_id="id"))
        store = Store(
            replica, FakeWriter(replica, progress), progress, Limits(), end_offsets=lambda _partitions: {}
        )
        interceptors = [AuthorizationInterceptor(policy)] if policy is not None else []
        server = grpc.aio.server(interceptors=interceptors)
        pb_grpc.add_Kvs2Servicer_to_server(Kvs2Servicer(store, default_timeout=5), server)
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        port = add_port(server, f"{HOST}:0", tls)
        await server.start()
        servers.append(server)
        return f"{HOST}:{port}"

    async def run(tls: ServerTls | None, policy: Policy | None = None) -> str:
        return await start(tls, policy)

    yield run
    for server in servers:
        await server.stop(None)
    for replica in replicas:
        replica.close()


def fresh(tls: ClientTls) -> ClientTls:
    """The same files, read again now (a new channel, a new handshake)."""
    return ClientTls(tls.ca, tls.cert, tls.key, tls.server_name)


async def refused(address: str, tls: ClientTls | None) -> grpc.aio.AioRpcError:
    async with AsyncClient(address, tls=tls, timeout=5, retries=0) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.set(b"k", b"v")
    return info.value


async def works(address: str, tls: ClientTls | None) -> None:
    async with AsyncClient(address, tls=tls, timeout=5, retries=0) as client:
        await client.set(b"k", b"v")
        value = await client.get(b"k")
        assert value is not None and value.data == b"v"


# ----- TLS and mTLS ------------------------------------------------------------------------------------
async def test_tls_serves_clients_that_trust_the_ca_and_refuses_plaintext(pki: Pki, serve: Serve) -> None:
    address = await serve(ServerTls.from_dir(pki.server_dir(mutual=False)))
    await works(address, pki.anonymous())
    assert (await refused(address, None)).code() == grpc.StatusCode.UNAVAILABLE
    stranger = CertificateAuthority("someone else")
    other = ClientTls(ca=stranger.write(pki.tmp / "stranger.crt"))
    assert (await refused(address, other)).code() == grpc.StatusCode.UNAVAILABLE


async def test_server_name_override_checks_the_certificate_for_that_name(
    pki: Pki,
    serve: Serve,
) -> None:
    leaf = pki.server_ca.issue("only a name", dns=("kvs2-client.store.svc",), client=False)
    address = await serve(ServerTls.from_dir(write_tls_dir(pki.tmp / "named", leaf)))
    base = pki.anonymous()
    await works(address, ClientTls(ca=base.ca, server_name="kvs2-client.store.svc"))
    # Dialled by IP without the override, the certificate does not name the server.
    assert (await refused(address, base)).code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_clients_without_a_certificate_or_with_an_untrusted_one(
    pki: Pki,
    serve: Serve,
) -> None:
    tls = ServerTls.from_dir(pki.server_dir(mutual=True))
    assert tls.mutual
    address = await serve(tls)
    await works(address, pki.client("alice"))
    assert (await refused(address, pki.anonymous())).code() == grpc.StatusCode.UNAVAILABLE
    untrusted = pki.client("mallory", ca=CertificateAuthority("not the client CA"))
    assert (await refused(address, untrusted)).code() == grpc.StatusCode.UNAVAILABLE


async def test_a_rotated_certificate_is_used_from_the_next_connection(
    pki: Pki,
    serve: Serve,
    caplog: pytest.LogCaptureFixture,
) -> None:
    directory = pki.server_dir(mutual=True)
    address = await serve(ServerTls.from_dir(directory))
    alice = pki.client("alice")
    await works(address, alice)
    # cert-manager renews with a new CA (worst case): clients trusting only the old CA must fail,
    # clients trusting the new one must succeed — without restarting the server.
    new_ca = CertificateAuthority("renewed server CA")
    renewed = new_ca.issue("kvs2 server", ips=(HOST,), client=False)
    with caplog.at_level(logging.INFO, logger="kvs2.credentials"):
        renewed.write(directory / "tls.crt", directory / "tls.key")
        trusting_new = ClientTls(ca=new_ca.write(pki.tmp / "new-ca.crt"), cert=alice.cert, key=alice.key)
        await works(address, trusting_new)
    assert "reloaded the certificate" in caplog.text
    assert (await refused(address, fresh(alice))).code() == grpc.StatusCode.UNAVAILABLE


async def test_a_rotated_client_ca_is_used_from_the_next_connection(
    pki: Pki,
    serve: Serve,
) -> None:
    directory = pki.server_dir(mutual=True)
    address = await serve(ServerTls.from_dir(directory))
    await works(address, pki.client("alice"))
    new_client_ca = CertificateAuthority("renewed client CA")
    new_client_ca.write(directory / "ca.crt")
    await works(address, pki.client("bob", ca=new_client_ca))
    assert (await refused(address, pki.client("carol"))).code() == grpc.StatusCode.UNAVAILABLE


async def test_a_half_written_pair_keeps_the_previous_certificate(
    pki: Pki,
    serve: Serve,
    caplog: pytest.LogCaptureFixture,
) -> None:
    directory = pki.server_dir(mutual=False)
    address = await serve(ServerTls.from_dir(directory))
    new_leaf = CertificateAuthority("next").issue("kvs2 server", ips=(HOST,), client=False)
    (directory / "tls.crt").write_bytes(new_leaf.cert_pem)  # the key is not there yet
    with caplog.at_level(logging.WARNING, logger="kvs2.credentials"):
        await works(address, pki.anonymous())  # still served with the old, consistent pair
    assert "cannot be used yet" in caplog.text


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "tls.key").unlink(), "cannot read the server private key"),
        (lambda d: (d / "tls.crt").write_text(""), "is empty"),
        (
            lambda d: (d / "tls.key").write_bytes(CertificateAuthority().issue("x").key_pem),
            "are not a usable pair",
        ),
        (lambda d: (d / "ca.crt").write_text("not a certificate\n"), "holds no usable certificate"),
    ],
)
def test_unusable_files_are_a_config_error_at_start(
    pki: Pki, damage: Callable[[Path], object], message: str
) -> None:
    directory = pki.server_dir(mutual=True)
    damage(directory)
    with pytest.raises(ConfigError, match=message):
        server_tls_from_options(str(directory), "", "", "")


def test_tls_options() -> None:
    assert server_tls_from_options("", "", "", "") is None
    with pytest.raises(ConfigError, match="go together"):
        server_tls_from_options("", "/x.crt", "", "")
    with pytest.raises(ConfigError, match="not both"):
        server_tls_from_options("/d", "/x.crt", "/x.key", "")
    with pytest.raises(ConfigError, match="needs a server certificate"):
        server_tls_from_options("", "", "", "/ca.crt")


def test_an_empty_ca_crt_means_tls_without_client_certificates(pki: Pki) -> None:
    directory = pki.server_dir(mutual=False)
    (directory / "ca.crt").write_text("")  # a public issuer's Secret
    assert not ServerTls.from_dir(directory).mutual


# ----- authorization -----------------------------------------------------------------------------------
async def test_the_authorization_map_is_enforced_per_rpc(pki: Pki, serve: Serve) -> None:
    policy = Policy(inline=parse_entries(["writer=read,write", "reader=read", "spiffe://team/app=write"]))
    address = await serve(ServerTls.from_dir(pki.server_dir(mutual=True)), policy)
    await works(address, pki.client("writer"))

    async with AsyncClient(address, tls=pki.client("reader"), timeout=5, retries=0) as reader:
        assert (await reader.get(b"k")) is not None
        assert [i.key for i in (await reader.range(prefix=b"")).items] == [b"k"]
        for write in (reader.set(b"k", b"x"), reader.delete(b"k"), reader.set_if(b"k", b"x", 0)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await write
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "client 'reader' lacks the 'write' right" in (info.value.details() or "")

    # Matched by a URI SAN; write does not imply read.
    app = pki.client("app-7f9c", uris=("spiffe://team/app",))
    async with AsyncClient(address, tls=app, timeout=5, retries=0) as client:
        await client.set(b"k2", b"v")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.get(b"k2")
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'app-7f9c'" in (info.value.details() or "") and "'read' right" in (info.value.details() or "")

    async with AsyncClient(address, tls=pki.client("nobody"), timeout=5, retries=0) as nobody:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in nobody.watch(prefix=b"k", reconnect=False):
                pass
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'read' right needed for Watch" in (info.value.details() or "")
    # Probes need no right.
    async with grpc.aio.secure_channel(address, pki.client("nobody").credentials()) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_authorization_file_is_reloaded_and_a_broken_one_keeps_the_rules(
    pki: Pki,
    serve: Serve,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = pki.tmp / "authz.yaml"
    path.write_text("alice: [read]\n")
    policy = policy_from_options(str(path), [])
    assert policy is not None
    address = await serve(ServerTls.from_dir(pki.server_dir(mutual=True)), policy)
    alice = pki.client("alice")
    assert (await refused(address, alice)).code() == grpc.StatusCode.PERMISSION_DENIED
    path.write_text("alice: read, write\n'*': [read]\n")
    await works(address, alice)
    with caplog.at_level(logging.WARNING, logger="kvs2.authz"):
        path.write_text("alice: [read, delete-everything]\n")
        await works(address, alice)
    assert "unknown right 'delete-everything'" in caplog.text


def test_authorization_needs_mutual_tls(pki: Pki, tmp_path: Path) -> None:
    policy = Policy(inline=parse_entries(["a=read"]))
    tls_only = ServerTls.from_dir(pki.server_dir(mutual=False))
    with pytest.raises(ConfigError, match="need mutual TLS"):
        ServeSettings("k:9", "t", tmp_path, tls=tls_only, authz=policy)
    with pytest.raises(ConfigError, match="need mutual TLS"):
        ServeSettings("k:9", "t", tmp_path, authz=policy)


def test_security_settings_survive_the_trip_to_a_replacement_worker(pki: Pki, tmp_path: Path) -> None:
    """kvs2.workers pickles ServeSettings to a freshly exec'd follower."""
    rules = tmp_path / "authz.yaml"
    rules.write_text("alice: [read]\n")
    policy = policy_from_options(str(rules), ["bob=write"])
    tls = ServerTls.from_dir(pki.server_dir(mutual=True))
    settings = ServeSettings("k:9", "t", tmp_path, tls=tls, authz=policy, health_listen="127.0.0.1:1")
    copy = pickle.loads(pickle.dumps(settings))
    assert copy.tls == tls and copy.health_listen == "127.0.0.1:1"
    assert copy.authz.rights(["alice", "bob"]) == frozenset({"read", "write"})


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["alice"], "is not SUBJECT=read,write"),
        (["alice=admin"], "unknown right 'admin'"),
        (["=read"], "SUBJECT"),
    ],
)
def test_bad_authorization_entries(entries: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_entries(entries)


def test_leaf_pem_is_unencrypted_pkcs8() -> None:
    leaf: Leaf = CertificateAuthority().issue("x")
    assert leaf.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_an_encrypted_key_is_a_config_error_not_a_password_prompt(pki: Pki) -> None:
    from cryptography.hazmat.primitives import serialization

    directory = pki.server_dir(mutual=False)
    key = serialization.load_pem_private_key((directory / "tls.key").read_bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (directory / "tls.key").write_bytes(encrypted)
    with pytest.raises(ConfigError, match="are not a usable pair"):
        server_tls_from_options(str(directory), "", "", "")
