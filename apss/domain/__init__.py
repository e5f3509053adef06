"""Pure rules, no I/O: money and currencies, the order and payment state machines, the catalog.

Imports nothing of apss but the leaves (errors, clock).
"""
