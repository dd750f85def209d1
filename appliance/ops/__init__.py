"""The management API's audit-log and webhook routes (`api.py`), until they join the rest of
`/api/v1`; everything else that lived here moved to `metadata/` (audit, events), `runtime/`,
`api/` (middleware, rate limits), `webhooks/` and `operations.py`."""
