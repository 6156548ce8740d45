"""The `fleet` command line: one thin module per command group (parse → one call → render)."""
