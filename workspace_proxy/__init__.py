"""workspace-proxy: an authenticating reverse proxy that pins Looker API sessions to a workspace."""

__version__ = "0.1.0"
