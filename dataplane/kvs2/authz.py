"""Who may do what: a map from client-certificate subjects to `read` / `write`, checked per call.

Only meaningful with mutual TLS: the subject is what the client's certificate proves — its Common Name
or any of its Subject Alternative Names (DNS, URI, e-mail, IP). A subject's rights are the union over
every entry that names one of the certificate's identities; the entry `*` applies to every client
that completed the handshake.

- `read`: Get, MultiGet, Range, Watch.
- `write`: Set and Delete, conditional or not (compare-and-set writes). `write` does not imply `read`.
- Health and server reflection need no right (any client the handshake admitted may probe).
- A Kvs2 method this table does not know (a newer RPC) needs `write`: unknown means closed.

Off by default: without a policy every client the TLS handshake admits may do everything.

Where: a gRPC server interceptor, so the core and the servicer never see identities. The interceptor
wraps the method's handler, because only the call's context carries the peer's certificate.

Sources: a YAML/JSON file (`subject: [read, write]` or `subject: "read,write"`), re-read when it
changes (a ConfigMap volume is updated in place), and/or inline entries `SUBJECT=read,write`.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import yaml

from kvs2.errors import ConfigError

log = logging.getLogger(__name__)

READ = "read"
WRITE = "write"
RIGHTS = (READ, WRITE)
ANYONE = "*"
SERVICE_PREFIX = "/kvs2.Kvs2/"

RIGHT_OF_METHOD: dict[str, str] = {
    "Get": READ,
    "MultiGet": READ,
    "Range": READ,
    "Watch": READ,
    # A snapshot discloses what a Range over every key does (a new replica of the store asks for it),
    # and a replica's positions are no secret beyond that.
    "Snapshot": READ,
    "ReplicaStatus": READ,
    "Set": WRITE,
    "Delete": WRITE,
}


def right_of(method: str) -> str | None:
    """The right a fully qualified method needs; None for methods outside the Kvs2 service."""
    if not method.startswith(SERVICE_PREFIX):
        return None
    return RIGHT_OF_METHOD.get(method.removeprefix(SERVICE_PREFIX), WRITE)


Rules = Mapping[str, frozenset[str]]


def _rights(raw: object, where: str) -> frozenset[str]:
    items: Iterable[object]
    if isinstance(raw, str):
        items = [part for part in raw.replace("+", ",").split(",") if part.strip()]
    elif isinstance(raw, list):
        items = raw
    else:
        raise ConfigError(f"{where}: rights must be a list or a comma-separated string of read/write")
    out = set()
    for item in items:
        right = str(item).strip().lower()
        if right not in RIGHTS:
            raise ConfigError(f"{where}: unknown right {item!r} (known: read, write)")
        out.add(right)
    return frozenset(out)


def parse_entries(entries: Sequence[str]) -> dict[str, frozenset[str]]:
    """`["alice=read,write", "bob=read"]` → rules; an entry without `=` is a ConfigError."""
    rules: dict[str, frozenset[str]] = {}
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        subject, sep, rights = entry.rpartition("=")
        if not sep or not subject.strip():
            raise ConfigError(f"authorization entry {entry!r} is not SUBJECT=read,write")
        subject = subject.strip()
        rules[subject] = rules.get(subject, frozenset()) | _rights(rights, f"authorization entry {entry!r}")
    return rules


def parse_document(text: str, where: str) -> dict[str, frozenset[str]]:
    """A YAML (or JSON) mapping of subject → rights."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} must map subjects to rights, e.g. `alice: [read, write]`")
    return {str(subject): _rights(rights, f"{where}: {subject!r}") for subject, rights in doc.items()}


@dataclass
class Policy:
    """The rules in force: inline entries plus a file that is re-read when it changes.

    A changed file that does not parse leaves the previous rules in force (and says so in the log):
    a typo in a ConfigMap must not lock every client out, nor let every client in.
    """

    inline: Rules = field(default_factory=dict)
    path: Path | None = None
    _from_file: Rules = field(default_factory=dict)
    # No lock: calls are checked on the server's event loop, one at a time. (And the settings that hold
    # this policy are pickled to replacement worker processes: kvs2.workers.)
    _stamp: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.path is not None:
            self._from_file, self._stamp = self._load(self.path)

    @staticmethod
    def _load(path: Path) -> tuple[Rules, tuple[int, int, int]]:
        try:
            st = os.stat(path)
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the authorization file {path}: {exc.strerror or exc}") from exc
        return parse_document(text, f"authorization file {path}"), (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self) -> None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return  # mid-swap or removed: keep what we have
        if (st.st_mtime_ns, st.st_size, st.st_ino) == self._stamp:
            return
        try:
            self._from_file, self._stamp = self._load(self.path)
        except ConfigError as exc:
            log.warning("authorization file changed but is unusable (keeping the previous rules): %s", exc)
            self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)  # report once per version
            return
        log.info("authorization: reloaded %s (%d subjects)", self.path, len(self._from_file))

    def rights(self, identities: Iterable[str]) -> frozenset[str]:
        if self.path is not None:
            self._refresh()
        out: frozenset[str] = frozenset()
        for rules in (self.inline, self._from_file):
            for subject in (ANYONE, *identities):
                out |= rules.get(subject, frozenset())
        return out


def policy_from_options(path: str, entries: Sequence[str]) -> Policy | None:
    """`--authz-file` and `--authz SUBJECT=RIGHTS` (repeatable) → a Policy, or None (authorization off)."""
    inline = parse_entries(entries)
    if not path and not inline:
        return None
    return Policy(inline=inline, path=Path(path) if path else None)


# ----- Redis users ---------------------------------------------------------------------------------
DEFAULT_USER = "default"  # the user `AUTH password` (without a user name) authenticates as, as in Redis


@dataclass(frozen=True)
class Users:
    """Redis-port users (`--redis-users DIR`): a Secret volume with one key per user, the key's value its
    password (a trailing newline is ignored). Their names are subjects of the same authorization map as
    certificate subjects: `alice: [read]` covers the user alice on the Redis port and a client certificate
    for alice on the gRPC port.

    Read at each AUTH, so a changed Secret (the kubelet swaps the volume's files) applies to the next
    AUTH without a restart; connections already authenticated stay so.
    """

    path: Path

    def names(self) -> list[str]:
        try:
            return sorted(p.name for p in self.path.iterdir() if not p.name.startswith(".") and p.is_file())
        except OSError as exc:
            raise ConfigError(f"cannot read the Redis users {self.path}: {exc.strerror or exc}") from exc

    def check(self, user: str, password: bytes) -> bool:
        """True when `user` exists and `password` is its password (compared in constant time)."""
        if not user or "/" in user or user.startswith(".") or "\0" in user:
            return False
        try:
            stored = (self.path / user).read_bytes()
        except OSError:
            return False
        return hmac.compare_digest(stored.rstrip(b"\r\n"), password)


def users_from_option(path: str) -> Users | None:
    """`--redis-users DIR` → Users (checked now: a readable directory with at least one user), or None."""
    if not path:
        return None
    users = Users(Path(path))
    if not users.path.is_dir():
        raise ConfigError(f"cannot read the Redis users {path}: not a directory (one file per user)")
    if not users.names():
        raise ConfigError(
            f"the Redis users directory {path} holds no users (one file per user: its password)"
        )
    return users


# ----- the interceptor -----------------------------------------------------------------------------
def identities(auth: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The certificate's Common Name first, then its Subject Alternative Names."""
    out: list[str] = []
    for prop in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth.get(prop, ()):
            text = value.decode("utf-8", errors="replace")
            if text not in out:
                out.append(text)
    return out


def _describe(names: Sequence[str]) -> str:
    if not names:
        return "a client without a certificate identity"
    return f"client {names[0]!r}" + (f" (also {', '.join(repr(n) for n in names[1:])})" if names[1:] else "")


Context = grpc.aio.ServicerContext[Any, Any]


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # the runtime class is not generic
    _Interceptor = grpc.aio.ServerInterceptor


class AuthorizationInterceptor(_Interceptor):
    """Refuses a Kvs2 call with PERMISSION_DENIED unless the caller's certificate has the right."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    async def _check(self, method: str, right: str, context: Context) -> None:
        names = identities(context.auth_context())
        if right not in self._policy.rights(names):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{_describe(names)} lacks the {right!r} right needed for "
                f"{method.removeprefix(SERVICE_PREFIX)}",
            )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        right = right_of(method)
        if handler is None or right is None:
            return handler
        check = self._check
        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary  # an async servicer method (the stubs know only sync ones)

            async def unary(request: Any, context: Context) -> Any:
                await check(method, right, context)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream

            async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
                await check(method, right, context)
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # Client- or bidi-streaming Kvs2 methods do not exist; refuse rather than pass one unchecked.
        raise RuntimeError(f"authorization: no wrapper for the streaming shape of {method}")
