"""The HTTP/1.1 server side: client connections on httptools, listeners, the client watch."""
