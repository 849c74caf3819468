"""Invoice-domain rules: pure functions, no I/O (docs/INVOICING.md)."""
