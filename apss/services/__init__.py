"""Use cases: checkout, payment events, fulfilment, catalog, players, merchants, the sandbox
provider. They call domain, store and channels; api, jobs and web call them."""
