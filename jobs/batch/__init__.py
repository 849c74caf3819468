"""SQL batch jobs (invoicing, reconcile, export, payments, dunning)."""
