"""The long-lived erasure service: journal, coalescing policy, the service itself and its Ray actor.

``policy`` (pure decisions), ``journal`` (durable request records in the store), ``core``
(``ErasureService``, a plain class), ``actor`` (the detached Ray actor and its start/stop).
The SDK that talks to it is ``expunge.orchestrator.client.Client``.
"""
