"""
The process: the service tree and its lifecycle (drain, reload), hand-over, worker processes.
"""
