"""The kvs2 Kubernetes operator: reconciles KeyValueStore resources into Kafka topics and workloads."""
