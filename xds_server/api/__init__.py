"""The admin API, generated from protos/xds_server/api/*.proto at install (never edited, never committed)."""
