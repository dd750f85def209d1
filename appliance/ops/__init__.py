"""Operations: audit log (and, later, metrics, logging, jobs, rate limits, webhooks)."""
