"""The sandbox provider: a payment provider that lives in this process, for test merchants."""
