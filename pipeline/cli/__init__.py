"""The `kframes` command line: `main` builds the parser; one module per command group."""
