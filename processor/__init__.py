"""Pays the refunds a dropshipping fulfiller's policy promises, from Kafka events."""
