"""The `videojobs` command-line client (entry point: `videojobs.cli.main:main`)."""
