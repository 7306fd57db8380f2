"""
A game session: the relay between client and backend, and its splice(2) path.
"""
