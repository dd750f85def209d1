"""HTTP: the OCI Distribution API, the error catalogue and request plumbing."""
