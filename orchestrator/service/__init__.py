"""The long-lived erasure service: journal, coalescing policy, the service itself and its Ray actor.

``policy`` (pure decisions), ``journal`` (durable request records in the store), ``board`` (where
each request stands, and waiting), ``recovery`` (what a crash left open), ``core``
(``ErasureService``, a plain class), ``views`` (what it reports), ``actor`` (the detached Ray
actor and its start/stop). The SDKs that talk to it: ``expunge.Client`` (HTTP) and
``expunge.RayClient`` (in-cluster, a Ray driver).
"""
