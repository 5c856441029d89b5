"""The HTTP front door of the erasure service: routes under ``/v1``, scoped tokens, problems, metrics.

Runs inside the service's process (``expunge.orchestrator.service.actor`` starts it), so a
request reaches the single writer without a second hop, and callers never hold a Ray
credential. docs/http-api.md describes the routes; docs/security.md the trust boundary.
"""
