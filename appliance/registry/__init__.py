"""Registry domain services, written once over any metadata store and any blob store."""

from appliance.registry.service import Registry

__all__ = ["Registry"]
