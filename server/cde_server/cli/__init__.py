"""The `cde` command line (`main`) and its sub-commands; each imports heavy modules lazily."""
