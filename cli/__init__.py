"""The meterflow command line: one typer sub-app per area."""
