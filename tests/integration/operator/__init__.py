"""The operator against a real control plane (etcd, apiserver, controller-manager, scheduler) and Kafka."""
