"""The embedded Endpoint Picker: pools, live metrics, scheduling, and its ext_proc protocol."""
