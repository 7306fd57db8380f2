"""
The backends: the pool and its states, the balancing policies, health checks.
"""
