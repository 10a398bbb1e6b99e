"""Learned models: network blocks, the shipped networks and their weights."""
