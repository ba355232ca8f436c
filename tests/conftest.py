"""Fixtures live in harness plugins, one per real component, so each stays small and owned; the hygiene
plugin makes harness children die with the run and attaches their logs to failing tests."""

pytest_plugins = [
    "tests.harness.hygiene",
    "tests.harness.fixtures_kafka",
    "tests.harness.fixtures_cluster",
    "tests.harness.fixtures_kubelet",
]
