-- wrk script for the HTTP benchmark: POST /v1/tasks with a JSON body and the API key, and a
-- machine-readable summary. The key comes from the environment (BENCH_API_KEY), never argv.
-- No response() callback on purpose: it would make wrk hand every response to Lua. wrk
-- already counts non-2xx/3xx answers in errors.status.
wrk.method = "POST"
-- BENCH_CASE (httpbench.CASES) picks the body. "publish" (the default) sends "cache": false:
-- every request takes the full path (record + publish). "join" and "hit" leave the prompt
-- cache on: identical requests join the first one while it is in flight, or hit its cached
-- answer, and publish nothing.
local prompt = '{"prompt": "Hello, orchestrator! Echo this back, word by word.", "model": "echo"'
if (os.getenv("BENCH_CASE") or "publish") == "publish" then
  wrk.body = prompt .. ', "cache": false}'
else
  wrk.body = prompt .. '}'
end
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_API_KEY") or "")

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"tool": "wrk", "requests": %d, "duration_s": %.6f, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_ms": {"p50": %.3f, "p90": %.3f, "p99": %.3f, "p999": %.3f, "max": %.3f, ' ..
    '"mean": %.3f}}\n',
    summary.requests, summary.duration / 1e6,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency:percentile(99.9) / 1e3, latency.max / 1e3, latency.mean / 1e3))
end
