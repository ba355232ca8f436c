"""The operator against a real control plane (etcd, kube-apiserver, controller-manager, scheduler) and real Kafka."""
