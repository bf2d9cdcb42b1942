"""Configuration: the settings read from the environment and the service registry."""
from config.registry import (OPTION_HEADERS, PROVIDERS, SERVICES, USER_AGENT, VERSION, Provider,
                             Service)
from config.settings import ConfigError, Settings

__all__ = ["OPTION_HEADERS", "PROVIDERS", "SERVICES", "USER_AGENT", "VERSION", "ConfigError",
           "Provider", "Service", "Settings"]
