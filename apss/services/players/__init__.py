"""What players hold: wallets and inventory, and deliveries the game performs itself."""
