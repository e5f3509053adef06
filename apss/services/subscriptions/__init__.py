"""Subscriptions: plans billed every period (service.py), and the moves an order's payment makes
to its subscription (periods.py, called from the order lifecycle inside its transaction)."""
