"""The shared objects Envoy loads: the AI filter module, built by setup.py from native/ai_filter.c."""
