"""Everything with I/O: sources, xDS serving, ext_proc services, the local runner and the CLI."""
