"""Disputes: the record a provider's dispute events keep, the chargeback and its reversal, the
merchant's dispute policy, the evidence bundle and its submission to the channel."""
