"""Request and response translation between the OpenAI API and providers' own APIs, one module per provider schema."""
