"""Test helpers: image factories, tiny model stores, an in-process server, a Redis server."""
