"""State shared between replicas: leases and the Redis connection."""
