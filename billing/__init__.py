"""Invoice-domain rules as pure functions (no I/O): what a document owes, its status, dunning steps.

Imports only ``pricing`` and ``schemas``; the SQL batch jobs in ``jobs.batch`` apply these rules."""
