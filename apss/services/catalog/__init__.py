"""The catalog: products, prices, grants and stock."""
