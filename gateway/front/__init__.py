"""
The public front: sniffing, admission, connection limits, PROXY headers and TLS.
"""
