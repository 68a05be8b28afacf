"""Sub-commands of the `cde` command line."""
