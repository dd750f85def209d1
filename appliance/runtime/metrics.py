"""The one Prometheus registry every module adds its metrics to.

Declare a metric at module level, on `REGISTRY`:

    from prometheus_client import Counter
    from appliance.runtime.metrics import REGISTRY

    PUSHES = Counter("berth_pushes", "Manifests pushed.", ["namespace"], registry=REGISTRY)

Names start with `berth_`; labels are bounded (a namespace or a route, never a tag, a digest
or a user-supplied string). Gauges that several worker processes would each report say how
they combine (`multiprocess_mode`), so that `/metrics` can add up the processes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

REGISTRY = CollectorRegistry(auto_describe=True)
