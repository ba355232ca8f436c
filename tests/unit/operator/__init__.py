"""Unit tests of the kvs2 operator (no cluster, no Kafka)."""
