"""Who is asking: accounts (passwords, API keys, roles, guests) and the step that turns a request into
an ``Actor``."""
