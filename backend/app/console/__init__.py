"""The operator's console: server-rendered pages at /console, signed in with an API token."""
