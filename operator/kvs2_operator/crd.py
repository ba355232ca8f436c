"""The KeyValueStore resource's identity and the names the operator gives to what it creates.

The CRD itself (schema, CEL rules, printer columns) has ONE source: `deploy/crd.yaml`, which is what
`kubectl apply -f deploy/` installs. This module holds only the identifiers the code needs; a unit test
checks that they agree with the YAML.
"""

from __future__ import annotations

GROUP = "kvs2.io"
VERSION = "v1alpha1"
KIND = "KeyValueStore"
PLURAL = "keyvaluestores"
SINGULAR = "keyvaluestore"
SHORT_NAMES = ("kvs",)
CRD_NAME = f"{PLURAL}.{GROUP}"

#: Field manager of server-side apply and the `source.component` of Events.
FIELD_MANAGER = "kvs2-operator"
#: The finalizer, present only on stores whose topicDeletionPolicy is Delete.
FINALIZER = f"{GROUP}/topic-deletion"
#: Prefix of kopf's bookkeeping annotations (progress, last-handled configuration).
ANNOTATION_PREFIX = GROUP

GRPC_PORT = 50051
DATA_DIR = "/var/lib/kvs2"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
APP_NAME = "kvs2"


def headless_service_name(store: str) -> str:
    """The StatefulSet's governing Service: stable per-pod DNS names, not-ready pods included."""
    return f"{store}-peers"


def client_service_name(store: str) -> str:
    """The Service clients use; same name as the store, so the endpoint is `<store>.<ns>.svc:50051`."""
    return store


def statefulset_name(store: str) -> str:
    return store


def pdb_name(store: str) -> str:
    return store
