"""What proves an erasure: receipts and their chain, re-derivation, scans, the membership audit and ``verify``."""
