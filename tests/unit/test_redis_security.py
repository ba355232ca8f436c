"""The Redis port's protection, over loopback with redis-py: TLS from the gRPC port's certificate files
(rotation picked up by the next connection), mutual TLS, AUTH / HELLO AUTH with users from a Secret-style
directory, and the read/write rights of kvs2.authz per command (NOAUTH, WRONGPASS, NOPERM).

The replica's own RedisFront and Store with the fake producer of conftest.py; certificates from
tests/harness/pki.py. Real Kafka and real processes: tests/integration/security/test_redis_security.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from kvs2.authz import Policy, Users, parse_entries, users_from_option
from kvs2.config import Limits, ServeSettings
from kvs2.core import Store
from kvs2.credentials import ServerTls
from kvs2.errors import ConfigError
from kvs2.progress import Progress, Snapshot
from kvs2.redis_server import RedisFront
from kvs2.storage import Replica, TopicIdentity
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ConnectionError, NoPermissionError

from tests.harness.pki import CertificateAuthority, write_tls_dir
from tests.unit.conftest import FakeWriter

HOST = "127.0.0.1"


async def cmd(r: aioredis.Redis, *args: bytes | str) -> Any:
    return await r.execute_command(*args)  # type: ignore[no-untyped-call]


@dataclass
class Certs:
    tmp: Path
    server_ca: CertificateAuthority
    client_ca: CertificateAuthority

    def server_dir(self, *, mutual: bool, ca: CertificateAuthority | None = None) -> Path:
        leaf = (ca or self.server_ca).issue("kvs2 server", dns=("localhost",), ips=(HOST,), client=False)
        return write_tls_dir(self.tmp / "server", leaf, self.client_ca if mutual else None)

    def client_files(self, name: str, ca: CertificateAuthority | None = None) -> tuple[str, str]:
        leaf = (ca or self.client_ca).issue(name, server=False)
        cert, key = leaf.write(self.tmp / f"client-{name}.crt", self.tmp / f"client-{name}.key")
        return str(cert), str(key)

    def trust(self, ca: CertificateAuthority | None = None) -> str:
        return str((ca or self.server_ca).write(self.tmp / "trusted-server-ca.crt"))


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path, CertificateAuthority("server CA"), CertificateAuthority("client CA"))


def users_dir(root: Path, users: dict[str, str]) -> Path:
    """The layout of a Secret volume: one file per user (`..data` and other dot-entries are skipped)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "..data").mkdir(exist_ok=True)
    for user, password in users.items():
        (root / user).write_text(password + "\n")  # a trailing newline (echo > file) is not part of it
    return root


@pytest.fixture
async def start_front(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    replica = Replica(tmp_path / "db", map_size=1 << 22)
    replica.reset(TopicIdentity("t", "id", 1))
    progress = Progress(asyncio.get_running_loop())
    progress.update(Snapshot(serving=True, partitions=1, topic_id="id"))
    store = Store(replica, FakeWriter(replica, progress), progress, Limits(), end_offsets=lambda p: {})
    fronts: list[RedisFront] = []

    async def start(
        tls: ServerTls | None = None, users: Users | None = None, policy: Policy | None = None
    ) -> int:
        front = RedisFront(store, timeout=1.0, topic="t", tls=tls, users=users, policy=policy)
        fronts.append(front)
        return await front.serve(HOST, 0, reuse_port=False)

    yield start
    for front in fronts:
        await front.close(1.0)
    replica.close()


def _plain(port: int, **kw: Any) -> aioredis.Redis:
    """redis-py without retries (its default retries a refused connection with back-off)."""
    return aioredis.Redis(host=HOST, port=port, retry=Retry(NoBackoff(), 0), **kw)


def _tls_client(port: int, ca: str, cert: tuple[str, str] | None = None, **kw: Any) -> aioredis.Redis:
    return _plain(
        port,
        ssl=True,
        ssl_ca_certs=ca,
        ssl_certfile=cert[0] if cert else None,
        ssl_keyfile=cert[1] if cert else None,
        **kw,
    )


async def test_tls_serves_redis_clients_and_refuses_plaintext(
    certs: Certs, start_front: Callable[..., Any]
) -> None:
    tls = ServerTls.from_dir(certs.server_dir(mutual=False))
    port = await start_front(tls=tls)
    async with _tls_client(port, certs.trust()) as r:
        assert await r.set("k", "v") is True
        assert await r.get("k") == b"v"
    async with _plain(port, socket_timeout=10) as plain:
        with pytest.raises(ConnectionError):
            await plain.ping()


async def test_mutual_tls_refuses_clients_without_a_trusted_certificate(
    certs: Certs, start_front: Callable[..., Any]
) -> None:
    port = await start_front(tls=ServerTls.from_dir(certs.server_dir(mutual=True)))
    async with _tls_client(port, certs.trust(), certs.client_files("alice")) as r:
        assert await r.ping() is True
    async with _tls_client(port, certs.trust(), socket_timeout=10) as anonymous:
        with pytest.raises(ConnectionError):
            await anonymous.ping()
    stranger = CertificateAuthority("someone else's CA")
    async with _tls_client(port, certs.trust(), certs.client_files("eve", stranger), socket_timeout=10) as r:
        with pytest.raises(ConnectionError):
            await r.ping()


async def test_rotated_certificate_files_are_used_by_the_next_connection(
    certs: Certs, start_front: Callable[..., Any]
) -> None:
    port = await start_front(tls=ServerTls.from_dir(certs.server_dir(mutual=True)))
    client = certs.client_files("alice")
    async with _tls_client(port, certs.trust(), client) as r:
        assert await r.ping() is True
    # Rotate: a server certificate from a new CA, and a new client CA.
    new_server_ca, new_client_ca = CertificateAuthority("server CA 2"), CertificateAuthority("client CA 2")
    certs.client_ca = new_client_ca
    certs.server_dir(mutual=True, ca=new_server_ca)
    new_trust = str(new_server_ca.write(certs.tmp / "trusted-new-server-ca.crt"))
    async with _tls_client(port, certs.trust(), client, socket_timeout=10) as old:
        with pytest.raises(ConnectionError, match=r"(?i)certificate verify failed"):
            await old.ping()
    async with _tls_client(port, new_trust, client, socket_timeout=10) as old_client_cert:
        with pytest.raises(ConnectionError):
            await old_client_cert.ping()  # signed by the client CA that was rotated out
    async with _tls_client(port, new_trust, certs.client_files("alice2", new_client_ca)) as r:
        assert await r.ping() is True


async def test_auth_users_from_a_secret_volume_and_rights_per_command(
    tmp_path: Path, start_front: Callable[..., Any]
) -> None:
    users = users_from_option(str(users_dir(tmp_path / "users", {"alice": "a-pw", "bob": "b-pw"})))
    policy = Policy(inline=parse_entries(["alice=read,write", "bob=read"]))
    port = await start_front(users=users, policy=policy)

    async with _plain(port) as anonymous:
        with pytest.raises(AuthenticationError, match=r"authenticated|Authentication required"):
            await anonymous.get("k")
    async with _plain(port, username="alice", password="wrong") as wrong:
        with pytest.raises(AuthenticationError):
            await wrong.ping()
    async with _plain(port, username="alice", password="a-pw") as alice:
        assert await alice.set("k", "v") is True
        assert await alice.get("k") == b"v"
    for protocol in (2, 3):  # RESP3: redis-py authenticates with HELLO 3 AUTH user pass
        async with _plain(port, username="bob", password="b-pw", protocol=protocol) as bob:
            assert await bob.get("k") == b"v"
            assert await bob.mget(["k", "missing"]) == [b"v", None]
            with pytest.raises(NoPermissionError, match=r"'bob'.*'write'.*SET"):
                await bob.set("k", "bob was here")
            with pytest.raises(NoPermissionError, match=r"'bob'.*'write'.*DEL"):
                await bob.delete("k")
            assert await bob.ping() is True
    async with _plain(port, username="alice", password="a-pw") as alice:
        assert await alice.get("k") == b"v"


async def _conversation(port: int, commands: list[bytes]) -> list[bytes]:
    """One plain socket, one command at a time (inline commands), each reply line as it came."""
    reader, writer = await asyncio.open_connection(HOST, port)
    replies = []
    try:
        for line in commands:
            writer.write(line + b"\r\n")
            replies.append(await asyncio.wait_for(reader.readline(), 10))
    finally:
        writer.close()
    return replies


async def test_auth_with_a_password_only_is_the_default_user(
    tmp_path: Path, start_front: Callable[..., Any]
) -> None:
    users = users_from_option(str(users_dir(tmp_path / "users", {"default": "pw"})))
    port = await start_front(users=users)  # no policy: an authenticated user may do everything
    replies = await _conversation(
        port, [b"GET x", b"HELLO 3", b"AUTH nope", b"AUTH a b c", b"AUTH pw", b"SET x 1", b"GET x"]
    )
    assert replies[0] == b"-NOAUTH Authentication required.\r\n"
    assert replies[1].startswith(b"-NOAUTH HELLO must be called with the client already authenticated")
    assert replies[2] == b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    assert replies[3] == b"-ERR wrong number of arguments for 'auth' command\r\n"
    assert replies[4:6] == [b"+OK\r\n", b"+OK\r\n"]
    assert replies[6] == b"$1\r\n"
    async with _plain(port, password="pw") as r:  # redis-py: HELLO 3 AUTH default pw
        assert await r.get("x") == b"1"


async def test_a_changed_password_file_applies_to_the_next_auth(
    tmp_path: Path, start_front: Callable[..., Any]
) -> None:
    root = users_dir(tmp_path / "users", {"alice": "old"})
    port = await start_front(users=users_from_option(str(root)))
    users_dir(root, {"alice": "new"})
    async with _plain(port, username="alice", password="old") as r:
        with pytest.raises(AuthenticationError):
            await r.ping()
    async with _plain(port, username="alice", password="new") as r:
        assert await r.ping() is True


async def test_mutual_tls_identities_get_their_rights_without_auth(
    certs: Certs, start_front: Callable[..., Any]
) -> None:
    """Without users, a client certificate's subject (CN) is the identity the authorization map names,
    as on the gRPC port."""
    tls = ServerTls.from_dir(certs.server_dir(mutual=True))
    port = await start_front(tls=tls, policy=Policy(inline=parse_entries(["reader=read"])))
    async with _tls_client(port, certs.trust(), certs.client_files("reader")) as r:
        assert await r.get("nothing") is None
        with pytest.raises(NoPermissionError, match=r"'reader'.*'write'"):
            await r.set("k", "v")


async def test_an_auth_user_acts_as_itself_not_as_its_certificate(
    certs: Certs, tmp_path: Path, start_front: Callable[..., Any]
) -> None:
    """With mutual TLS and users, AUTH picks who the connection acts as: a read-only user does not
    inherit the write right of the certificate it connected with."""
    tls = ServerTls.from_dir(certs.server_dir(mutual=True))
    users = users_from_option(str(users_dir(tmp_path / "users", {"auditor": "pw"})))
    policy = Policy(inline=parse_entries(["app=read,write", "auditor=read"]))
    port = await start_front(tls=tls, users=users, policy=policy)
    async with _tls_client(
        port, certs.trust(), certs.client_files("app"), username="auditor", password="pw"
    ) as r:
        assert await r.get("k") is None
        with pytest.raises(NoPermissionError, match=r"user 'auditor' lacks the 'write' right"):
            await r.set("k", "v")


async def test_auth_without_users_is_a_clear_error(start_front: Callable[..., Any]) -> None:
    port = await start_front()
    replies = await _conversation(port, [b"AUTH pw", b"SET k v"])
    assert replies[0].startswith(b"-ERR AUTH <password> called without any password configured")
    assert replies[1] == b"+OK\r\n"  # no users: the port is open, as before


def test_redis_port_next_to_mutual_tls_is_allowed_now(certs: Certs, tmp_path: Path) -> None:
    """The Redis port gets the same TLS (and client CA) as gRPC, so it no longer opens a way around it."""
    mutual = ServerTls.from_dir(certs.server_dir(mutual=True))
    settings = ServeSettings("k:9", "t", tmp_path, tls=mutual, redis_listen="127.0.0.1:6379")
    assert settings.tls == mutual


def test_authorization_with_redis_users_needs_no_mutual_tls(tmp_path: Path) -> None:
    users = users_from_option(str(users_dir(tmp_path / "users", {"alice": "pw"})))
    policy = Policy(inline=parse_entries(["alice=read"]))
    settings = ServeSettings(
        "k:9", "t", tmp_path, redis_listen="127.0.0.1:1", redis_users=users, authz=policy
    )
    assert settings.redis_users == users
    with pytest.raises(ConfigError, match="--redis-users needs --redis-listen"):
        ServeSettings("k:9", "t", tmp_path, redis_users=users)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "holds no users"),
        (None, "cannot read the Redis users"),
    ],
)
def test_bad_users_directory(tmp_path: Path, layout: dict[str, str] | None, message: str) -> None:
    root = tmp_path / "users"
    if layout is not None:
        users_dir(root, layout)
    with pytest.raises(ConfigError, match=message):
        users_from_option(str(root))
