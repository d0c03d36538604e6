"""Thin I/O adapters: Redis feature store, model store, Kafka helpers."""
