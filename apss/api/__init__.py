"""HTTP controllers, authentication, and the one mapping of errors to HTTP (api/errors.py)."""
