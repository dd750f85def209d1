"""Moving in: `berth import`, copying the repositories of another registry into Berth.

From a Distribution store read directly (`distribution.py`, on disk or in S3 through
`tree.py`), or from a running registry over its API (`remote.py`); `service.py` runs an import
through the registry's own services and `report.py` says what it did. The click commands are
in `cli.py`.
"""
