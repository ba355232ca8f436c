"""Fixtures live in harness plugins, one per real component, so each stays small and owned."""

pytest_plugins = [
    "tests.harness.fixtures_kafka",
    "tests.harness.fixtures_cluster",
    "tests.harness.fixtures_kubelet",
]
