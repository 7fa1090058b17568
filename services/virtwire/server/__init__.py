"""gRPC servers: thin adapters over the plain classes in virtwire.net."""
