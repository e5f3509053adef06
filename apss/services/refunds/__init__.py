"""Refunds and chargebacks: money back to the payer, and goods back from the player."""
