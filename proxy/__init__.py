"""The proxy blueprint and the modules behind it."""
from proxy.routes import bp

__all__ = ["bp"]
