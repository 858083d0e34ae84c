"""cycles_sdk: a typed Python SDK for Cycles budget authorities."""
