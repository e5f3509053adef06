"""Orders: checkout (pricing, reservation, the payment), their state moves and stock, and finishing requests cut between transactions."""
