"""Service discovery: backends found in DNS (``- dns: NAME:PORT`` in a pool), re-resolved."""
