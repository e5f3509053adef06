"""Promotions: automatic discounts, coupons and flash sales (what applies, what is redeemed), and quotes."""
