"""Webhook delivery: signing, URL policy, sending, and the worker loop."""
