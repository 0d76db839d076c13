"""servelane command-line entry point."""
