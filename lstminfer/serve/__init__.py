"""``lstminfer serve``: the edge service (KServe v2 over HTTP, sequences batched into pool steps).

``protocol`` is the v2 codec (pure functions), ``app`` the server (aiohttp), ``command`` the
command line, ``sequences``/``batcher`` the sequence manager and its batcher (asyncio, no
transport). Importing this package imports no server library: ``lstminfer`` stays quick to start.
"""
