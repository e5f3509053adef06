"""Merchants: accounts, secret keys, the admin token, and the demo store."""
