"""Process infrastructure: logs, metrics, background jobs and their schedule, what the serving
processes of one host share (token buckets, locks, the host agent) and what hosts tell each
other (limit sync). Below the features, above the metadata: nothing here knows HTTP."""
