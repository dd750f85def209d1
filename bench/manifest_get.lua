-- wrk script for (c): manifest GET with the Accept header docker/containerd send.
-- Usage: wrk -t2 -c32 -d10s -s bench/manifest_get.lua http://HOST/v2/REPO/manifests/TAG
-- BENCH_AUTHORIZATION (optional): an Authorization header value, e.g. "Bearer <token>".
-- The done() hook prints one JSON line (prefixed "BENCH_JSON ") that bench/run.py parses.
-- No HEAD script: wrk 4.1 cannot make HEAD requests (see bench/load.py).

wrk.method = "GET"
wrk.headers["Accept"] = "application/vnd.oci.image.manifest.v1+json, "
  .. "application/vnd.oci.image.index.v1+json, "
  .. "application/vnd.docker.distribution.manifest.v2+json, "
  .. "application/vnd.docker.distribution.manifest.list.v2+json"
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "mean": %.1f, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
