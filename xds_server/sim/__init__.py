"""Test and demo backends: `xds-server sim testupstream|vllm`."""
