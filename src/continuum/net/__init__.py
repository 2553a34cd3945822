"""trio I/O: the network layer (sockets, TLS, wire protocols)."""
