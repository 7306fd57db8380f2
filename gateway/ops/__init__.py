"""
What operators see: the children list and counters, sampled refusal logs, the
access log and the admin endpoint.
"""
