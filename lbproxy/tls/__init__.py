"""TLS: server contexts with SNI certificate selection, ClientHello SNI peeking, upstream contexts."""
