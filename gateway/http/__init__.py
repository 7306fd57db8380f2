"""
HTTP on the front: the static site, its hardened channel, Range requests.
"""
