"""
The cluster (C{--cluster}): several gateway nodes sharing state through Redis.
"""
