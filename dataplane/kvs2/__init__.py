"""kvs2: a replicated key-value store whose write log is an Apache Kafka topic.

Every replica consumes all partitions of the topic and materializes them in a local LMDB
environment; reads are served locally, writes go through Kafka.
"""

__version__ = "0.1.0"
