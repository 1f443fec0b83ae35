"""``lstminfer serve``: models over the Open Inference Protocol (KServe v2) on HTTP.

``protocol`` is the v2 codec (pure functions), ``app`` the server (aiohttp), ``command`` the
command line. Importing this package imports no server library: ``lstminfer`` stays quick to start.
"""
