"""Payment channel adapters behind one Protocol (channels/base.py), one package per provider."""
