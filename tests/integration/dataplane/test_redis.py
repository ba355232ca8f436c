"""The Redis front door with real clients: redis-cli (Debian's redis-tools) and redis-py, against
replicas as real `kvs2 serve --redis-listen` processes over the real Kafka."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kvs2.client import Client
from kvs2.credentials import ClientTls
from redis.exceptions import BusyLoadingError, ResponseError

from tests.harness.common import free_port, progress, wait_until
from tests.harness.debian import ensure_apt
from tests.harness.kafka import KafkaBroker
from tests.harness.pki import CertificateAuthority, write_tls_dir
from tests.harness.replica import ReplicaProcess
from tests.integration.dataplane.conftest import StartReplica


@pytest.fixture(scope="session")
def redis_cli(pytestconfig: pytest.Config) -> Path:
    """`redis-cli`, installed from Debian's redis-tools when missing (progress shown live)."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    live = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    with live:
        path = ensure_apt("redis-tools", "redis-cli")
        progress(f"redis-cli: {path}")
    return path


def _start(
    start_replica: StartReplica,
    bootstrap: str,
    topic: str,
    name: str,
    extra: tuple[str, ...] = (),
    **kw: Any,
) -> tuple[ReplicaProcess, int]:
    port = free_port()
    args = ("--redis-listen", f"127.0.0.1:{port}", *extra)
    replica = start_replica(bootstrap, topic, name, extra_args=args, **kw)
    return replica, port


@contextlib.contextmanager
def _client(port: int, protocol: int = 2) -> Iterator[redis.Redis]:
    client = redis.Redis(port=port, protocol=protocol, socket_timeout=30, retry_on_error=[])
    try:
        yield client
    finally:
        client.close()


def cmd(r: redis.Redis, *args: bytes | str) -> Any:
    """`execute_command` (untyped in redis-py)."""
    return r.execute_command(*args)  # type: ignore[no-untyped-call]


def _cli(cli: Path, port: int, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(cli), "-h", "127.0.0.1", "-p", str(port), *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_redis_py_across_two_replicas(kafka: KafkaBroker, topic: str, start_replica: StartReplica) -> None:
    """A SET through one replica is readable through the other, with plain GET/MGET (eventually) and at
    once with KVS2.GET AFTER its token or LINEARIZABLE; pipelining; compare-and-set; errors."""
    _, port_a = _start(start_replica, kafka.bootstrap_servers, topic, "a")
    _, port_b = _start(start_replica, kafka.bootstrap_servers, topic, "b")
    with _client(port_a) as a, _client(port_b, protocol=3) as b:
        assert a.set("greeting", "hello") is True
        wait_until(lambda: b.get("greeting") == b"hello", timeout=15, what="replica b to apply the SET")
        assert b.mget(["greeting", "missing", "greeting"]) == [b"hello", None, b"hello"]
        assert b.exists("greeting", "missing") == 1

        # read-your-writes across replicas: no waiting loop, the read itself waits for the token
        written = cmd(a, "KVS2.SET", "ryw", "v1")  # RESP2: a flat list of field, value
        fields = dict(zip(written[::2], written[1::2], strict=True))
        assert fields[b"status"] == b"PUBLISHED"
        assert cmd(b, "KVS2.GET", "ryw", "AFTER", fields[b"token"].decode(), "WITHREVISION") == [
            b"v1",
            fields[b"revision"],
        ]
        a.set("lin", "x")
        assert cmd(b, "KVS2.GET", "lin", "LINEARIZABLE") == b"x"

        # pipelining: 500 writes in one round trip, replies in order, then one MGET sees them all
        pipe = a.pipeline(transaction=False)
        for i in range(500):
            pipe.set(f"p:{i:03d}", f"v{i}")
        assert pipe.execute() == [True] * 500
        keys = [f"p:{i:03d}" for i in range(500)]
        last = cmd(a, "KVS2.SET", "p:last", "done")
        cmd(b, "KVS2.GET", "p:last", "AFTER", last[last.index(b"token") + 1].decode())
        wait_until(lambda: None not in b.mget(keys), timeout=15, what="replica b to apply the pipeline")
        assert b.mget(keys) == [f"v{i}".encode() for i in range(500)]

        # compare-and-set through the leaderless CAS
        assert a.set("lock", "me", nx=True) is True
        assert a.set("lock", "you", nx=True) is None
        assert a.set("absent", "x", xx=True) is None
        assert a.set("lock", "mine", xx=True) is True
        _, revision = cmd(a, "KVS2.GET", "lock", "WITHREVISION")
        assert cmd(a, "SET", "lock", "stale", "IFREV", str(revision - 1)) is None
        assert cmd(a, "SET", "lock", "fresh", "IFREV", str(revision)) is True
        failed = cmd(b, "KVS2.SET", "lock", "late", "IFREV", str(revision))
        assert failed[b"status"] == b"CONDITION_FAILED"
        assert failed[b"revision"] > revision
        assert cmd(b, "KVS2.GET", "lock", "AFTER", failed[b"token"].decode()) == b"fresh"
        assert a.delete("lock", "never-there") == 1

        # errors are Redis errors, and the connection stays usable after each
        for bad, message in [
            (("GET", ""), "key must not be empty"),
            (("SET", "big", b"x" * 2_000_000), "largest value the topic accepts is"),
            (("FLUSHALL",), "unknown command 'FLUSHALL'"),
            (("SET", "k", "v", "PX", "100"), "kvs2 keys do not expire"),
        ]:
            with pytest.raises(ResponseError) as info:
                cmd(a, *bad)
            assert message in str(info.value)
            assert a.ping() is True


def test_redis_cli_scan_pipe_and_errors(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica, redis_cli: Path
) -> None:
    """redis-cli: mass insert with --pipe on one replica, --scan on the other covers every key exactly
    once (also redis-py's scan_iter), errors, RESP3 (-3), INFO."""
    _, port_a = _start(start_replica, kafka.bootstrap_servers, topic, "a")
    _, port_b = _start(start_replica, kafka.bootstrap_servers, topic, "b")
    assert _cli(redis_cli, port_a, "SET", "hello", "world").stdout == b"OK\n"
    commands = b"".join(b"SET user:%04d v%d\r\n" % (i, i) for i in range(1000)) + b"SET other x\r\n"
    piped = _cli(redis_cli, port_a, "--pipe", stdin=commands)
    assert piped.returncode == 0, piped.stderr
    assert b"errors: 0, replies: 1001" in piped.stdout

    expected = {f"user:{i:04d}".encode() for i in range(1000)}
    with _client(port_b) as b:
        wait_until(lambda: b.dbsize() == 1002, timeout=30, what="replica b to apply the mass insert")
        found = list(b.scan_iter(match="user:*", count=37))
        assert len(found) == len(expected)
        assert set(found) == expected
    scanned = _cli(redis_cli, port_b, "--scan", "--pattern", "user:*")
    assert scanned.returncode == 0, scanned.stderr
    lines = scanned.stdout.splitlines()
    assert len(lines) == 1000
    assert set(lines) == expected

    assert _cli(redis_cli, port_b, "GET", "hello").stdout == b"world\n"
    assert _cli(redis_cli, port_b, "-3", "MGET", "hello", "nope").stdout == b"world\n\n"
    hello = _cli(redis_cli, port_b, "-3", "HELLO", "3").stdout.decode()
    assert "proto 3" in hello.splitlines()
    info = _cli(redis_cli, port_b, "INFO", "kvs2").stdout.decode()
    assert "serving:1" in info
    assert f"topic:{topic}" in info
    empty_key = _cli(redis_cli, port_b, "GET", "")
    assert b"ERR key must not be empty" in empty_key.stdout + empty_key.stderr
    unknown = _cli(redis_cli, port_b, "HSET", "h", "f", "v")
    assert b"ERR unknown command 'HSET'" in unknown.stdout + unknown.stderr


def test_a_replica_not_serving_answers_loading(
    topic_name: str, start_replica: StartReplica, redis_cli: Path
) -> None:
    """Kafka unreachable: the replica is up but not serving; reads get -LOADING, PING and INFO work."""
    nowhere = f"127.0.0.1:{free_port()}"
    replica, port = _start(start_replica, nowhere, topic_name, "a", wait=False)
    wait_until(
        lambda: replica.health() == "NOT_SERVING", timeout=30, what="the replica to answer NOT_SERVING"
    )
    wait_until(
        lambda: _cli(redis_cli, port, "PING").stdout == b"PONG\n", timeout=30, what="the Redis port to answer"
    )
    got = _cli(redis_cli, port, "GET", "k")
    assert b"LOADING this replica is catching up with Kafka" in got.stdout + got.stderr
    assert "loading:1" in _cli(redis_cli, port, "INFO").stdout.decode()
    with _client(port) as r:
        with pytest.raises(BusyLoadingError, match="catching up"):
            r.mget(["a", "b"])
        assert r.ping() is True


def test_every_worker_process_serves_the_redis_port(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    """`--workers 2`: both processes accept on the Redis port (SO_REUSEPORT); whichever a connection
    reaches, it reads the same data, and a scan continued on its connection covers every key once."""
    _, port = _start(start_replica, kafka.bootstrap_servers, topic, "a", extra=("--workers", "2"))
    with _client(port) as writer:
        pipe = writer.pipeline(transaction=False)
        for i in range(200):
            pipe.set(f"w:{i:03d}", str(i))
        pipe.execute()
        last = cmd(writer, "KVS2.SET", "w:last", "x")
        token = last[last.index(b"token") + 1].decode()
    pids = set()
    for _ in range(12):  # fresh connections: the kernel spreads them over both processes
        with _client(port) as r:
            assert cmd(r, "KVS2.GET", "w:last", "AFTER", token) == b"x"

            def applied(client: redis.Redis = r) -> bool:
                return bool(client.dbsize() == 201)

            wait_until(applied, timeout=15, what="all writes applied")
            pids.add(r.info("server")["process_id"])
            assert sorted(r.scan_iter(match="w:*", count=9)) == sorted(
                [f"w:{i:03d}".encode() for i in range(200)] + [b"w:last"]
            )
    assert len(pids) == 2, f"12 connections all reached one process: {pids}"


def test_redis_port_with_mutual_tls_auth_and_rights(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica, redis_cli: Path, tmp_path: Path
) -> None:
    """A replica whose gRPC port has mutual TLS and an authorization map: its Redis port speaks TLS with
    the same certificate files (redis-cli --tls --cacert, redis-py ssl=True), requires client certificates,
    requires AUTH (users from a Secret-style directory) and applies the same map to AUTH users; a gRPC
    client with a certificate reads what a Redis client wrote."""
    server_ca, client_ca = CertificateAuthority("server CA"), CertificateAuthority("client CA")
    leaf = server_ca.issue("kvs2 replica", dns=("localhost",), ips=("127.0.0.1",), client=False)
    tls_dir = write_tls_dir(tmp_path / "tls", leaf, client_ca)
    users = tmp_path / "users"
    users.mkdir()
    (users / "writer").write_text("w-pa55\n")
    (users / "reader").write_text("r-pa55\n")
    health = free_port()
    replica, port = _start(
        start_replica,
        kafka.bootstrap_servers,
        topic,
        "tls",
        (
            "--tls-dir", str(tls_dir),
            "--redis-users", str(users),
            "--authz", "writer=read,write",
            "--authz", "reader=read",
            "--authz", "app=read",
            "--health-listen", f"127.0.0.1:{health}",
        ),
        wait=False,
    )  # fmt: skip

    def serving() -> bool:
        try:
            with Client(f"127.0.0.1:{health}", timeout=2.0, retries=0) as c:
                return c.health() == "SERVING"
        except Exception:
            return False

    wait_until(serving, timeout=90, what=f"the TLS replica to serve (log {replica.log_path})")
    ca = server_ca.write(tmp_path / "client" / "server-ca.crt")
    cert, key = client_ca.issue("app", server=False).write(
        tmp_path / "client" / "app.crt", tmp_path / "client" / "app.key"
    )
    tls_args = ("--tls", "--cacert", str(ca), "--cert", str(cert), "--key", str(key))

    def cli(*args: str) -> bytes:
        done = _cli(redis_cli, port, *tls_args, "--no-auth-warning", *args)
        return done.stdout + done.stderr

    assert cli("--user", "writer", "--pass", "w-pa55", "SET", "tls-key", "hello") == b"OK\n"
    wait_until(
        lambda: cli("--user", "reader", "--pass", "r-pa55", "GET", "tls-key") == b"hello\n",
        timeout=15,
        what="the reader to see the writer's SET",
    )
    refused = cli("--user", "reader", "--pass", "r-pa55", "SET", "tls-key", "x")
    assert b"NOPERM user 'reader' lacks the 'write' right needed for SET" in refused
    assert b"NOAUTH" in cli("GET", "tls-key")
    assert b"WRONGPASS" in cli("--user", "writer", "--pass", "nope", "GET", "tls-key")
    no_cert = _cli(redis_cli, port, "--tls", "--cacert", str(ca), "PING")
    assert b"PONG" not in no_cert.stdout, "a client without a certificate got through the mutual TLS"
    plaintext = _cli(redis_cli, port, "PING")
    assert b"PONG" not in plaintext.stdout

    with redis.Redis(
        host="127.0.0.1",
        port=port,
        ssl=True,
        ssl_ca_certs=str(ca),
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        username="writer",
        password="w-pa55",
        protocol=3,
        socket_timeout=30,
    ) as r:
        assert r.get("tls-key") == b"hello"
        pipe = r.pipeline(transaction=False)
        pipe.set("tls-1", "one").set("tls-2", "two")
        assert pipe.execute() == [True, True]
        # Both acknowledged: a linearizable read must see them (a read pipelined with a write is concurrent
        # with it, so it would not have to).
        assert r.execute_command("KVS2.GET", "tls-2", "LINEARIZABLE") == b"two"
    grpc_tls = ClientTls(ca=ca, cert=cert, key=key, server_name="localhost")
    with Client(replica.target, timeout=10, tls=grpc_tls) as g:
        found = g.get(b"tls-2")
        assert found is not None and found.data == b"two"
