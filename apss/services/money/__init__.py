"""Money: the ledger, fees and commission, settlement, reconciliation, FX, reports."""
