"""Pages served by APSS itself: the sandbox payer page and the hosted checkout page."""
