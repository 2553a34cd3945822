"""The upstream side: HTTP/1.1 and HTTP/2 connection pools behind one exchange interface."""
