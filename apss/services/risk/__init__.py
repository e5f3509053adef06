"""Risk control: rules, lists, velocity counters and decisions (engine.py); reviews (reviews.py)."""
