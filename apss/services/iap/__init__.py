"""In-app purchases from the app stores (Apple): verified offline, delivered once."""
