"""Kafka: the source (aiokafka consumer group) and the dead-letter topic."""
