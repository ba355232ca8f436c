"""How a container's environment and command line come about, as the real kubelet does it (pure code).

- `expand()` is Kubernetes' `$(VAR)` expansion: `$(NAME)` becomes NAME's value if NAME was defined
  earlier, else stays as written; `$$` is a literal `$`; any other `$` is kept.
- `container_env()` walks `envFrom` then `env` in order; a plain `value` is expanded against what is
  defined so far, `valueFrom` values are not expanded (downward API, Secret and ConfigMap keys).
- `rewrite_paths()` stands in for mounts: there is no mount namespace here, so every mount path that
  appears as a path in the command, args, env values or workingDir is replaced by the host directory
  backing that volume. The data plane's `KVS2_DATA_DIR=/var/lib/kvs2` thus lands in the PVC's directory.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class ConfigError(Exception):
    """The container cannot be configured yet (a missing Secret, ConfigMap or key):
    the kubelet reports `CreateContainerConfigError` and tries again later."""


def expand(text: str, defined: Mapping[str, str]) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end == -1:  # unclosed: the rest is literal
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            out.append(defined[name] if name in defined else text[i : end + 1])
            i = end + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


#: Reads an object's JSON from the API: (kind, namespace, name) -> object or None when absent.
Lookup = Callable[[str, str, str], Mapping[str, Any] | None]

_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_ref(pod: Mapping[str, Any], path: str) -> str:
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    status = pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.hostIPs": ",".join(a["ip"] for a in status.get("hostIPs") or ()),
        "status.podIP": status.get("podIP"),
        "status.podIPs": ",".join(a["ip"] for a in status.get("podIPs") or ()),
    }
    if path in simple:
        return str(simple[path] or "")
    match = _LABEL_REF.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")


def _key_of(lookup: Lookup, kind: str, namespace: str, ref: Mapping[str, Any], what: str) -> str | None:
    obj = lookup(kind, namespace, str(ref.get("name", "")))
    optional = bool(ref.get("optional"))
    if obj is None:
        if optional:
            return None
        raise ConfigError(f'{kind.lower()} "{ref.get("name")}" not found ({what})')
    key = str(ref["key"])
    if kind == "Secret":
        data = obj.get("data") or {}
        if key in data:
            return base64.b64decode(data[key]).decode()
        string_data = obj.get("stringData") or {}
        if key in string_data:
            return str(string_data[key])
    else:
        cm_data = obj.get("data") or {}
        if key in cm_data:
            return str(cm_data[key])
    if optional:
        return None
    raise ConfigError(f"couldn't find key {key} in {kind} {namespace}/{ref.get('name')} ({what})")


def _all_keys(lookup: Lookup, kind: str, namespace: str, ref: Mapping[str, Any]) -> dict[str, str]:
    obj = lookup(kind, namespace, str(ref.get("name", "")))
    if obj is None:
        if ref.get("optional"):
            return {}
        raise ConfigError(f'{kind.lower()} "{ref.get("name")}" not found (envFrom)')
    data = obj.get("data") or {}
    if kind == "Secret":
        return {k: base64.b64decode(v).decode() for k, v in data.items()}
    return {k: str(v) for k, v in data.items()}


def container_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], lookup: Lookup, base: Mapping[str, str]
) -> dict[str, str]:
    """The container's environment on top of `base` (PATH, HOME, HOSTNAME …)."""
    namespace = str(pod["metadata"]["namespace"])
    env: dict[str, str] = dict(base)
    defined: dict[str, str] = {}
    for source in container.get("envFrom") or ():
        prefix = str(source.get("prefix", ""))
        if "configMapRef" in source:
            values = _all_keys(lookup, "ConfigMap", namespace, source["configMapRef"])
        elif "secretRef" in source:
            values = _all_keys(lookup, "Secret", namespace, source["secretRef"])
        else:
            continue
        for key, text in values.items():
            defined[prefix + key] = text
    for item in container.get("env") or ():
        name = str(item["name"])
        value: str | None
        if "valueFrom" in item:
            source = item["valueFrom"]
            if "fieldRef" in source:
                value = field_ref(pod, str(source["fieldRef"]["fieldPath"]))
            elif "secretKeyRef" in source:
                value = _key_of(lookup, "Secret", namespace, source["secretKeyRef"], f"env {name}")
            elif "configMapKeyRef" in source:
                value = _key_of(lookup, "ConfigMap", namespace, source["configMapKeyRef"], f"env {name}")
            elif "resourceFieldRef" in source:
                value = resource_field(container, source["resourceFieldRef"])
            else:
                raise ConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")
            if value is None:
                continue  # an optional reference that does not resolve leaves the variable unset
        else:
            value = expand(str(item.get("value", "")), defined)
        defined[name] = value
    env.update(defined)
    return env


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1,
    "m": 0.001,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(text: str) -> float:
    match = _QUANTITY.match(str(text))
    if not match or match.group(2) not in _SUFFIX:
        raise ConfigError(f"unsupported quantity {text!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def resource_field(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """limits.cpu / requests.memory … of the container (limits fall back to requests, then to 0)."""
    kind, _, resource = str(ref["resource"]).partition(".")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(resource) or (resources.get("requests") or {}).get(resource)
    divisor = quantity(str(ref.get("divisor", "1")))
    value = quantity(str(raw)) if raw is not None else 0.0
    return str(max(1, -(-value // divisor)) if resource == "cpu" else int(value // divisor))


def rewrite_paths(text: str, mounts: Sequence[tuple[str, str]]) -> str:
    """Replace each mount path (as a whole path component sequence) by its host directory.

    `mounts` is (mountPath, hostDir) pairs; the longest mount path wins, as a nested mount would.
    """
    table = {m.rstrip("/"): d for m, d in mounts if m and m != "/"}
    if not table:
        return text
    alternatives = "|".join(re.escape(m) for m in sorted(table, key=len, reverse=True))
    pattern = re.compile(r"(?<![\w.\-/])(" + alternatives + r")(?=$|[/:,;=\s])")
    # One pass, so a host directory put in by one mount is never rewritten again by another.
    return pattern.sub(lambda m: table[m.group(1)], text)


#: `name.namespace.svc[.cluster.local][:port]`, as a whole word (not inside a longer host name).
_SERVICE = re.compile(
    r"(?<![\w.\-])([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.svc"
    r"(?:\.cluster\.local)?(?::(\d+))?(?![\w.\-])"
)

#: (namespace, service, port or None) -> "ip:targetPort" of a ready endpoint, or None if there is none.
ServiceResolver = Callable[[str, str, int | None], str | None]


def resolve_services(text: str, resolve: ServiceResolver) -> str:
    """Stand-in for cluster DNS plus kube-proxy: a Service's DNS name (and port) becomes the address of one
    of its ready endpoints. Names that do not resolve are left as written, so the program fails as it
    would with an unreachable Service."""

    def replace(match: re.Match[str]) -> str:
        name, namespace, port = match.group(1), match.group(2), match.group(3)
        found = resolve(namespace, name, int(port) if port else None)
        return found if found is not None else match.group(0)

    return _SERVICE.sub(replace, text)
