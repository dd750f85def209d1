"""Webhook notifications, in the shape of the Distribution registry's `notifications/`:
`endpoints` (where events go, and the address check of a namespace's endpoint), `records` (the
webhook tables), `batching` (pull events gathered in memory) and `delivery` (the leader's job).
Events are queued by `metadata/events.py`, in the transaction of the change they report."""
