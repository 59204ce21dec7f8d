-- wrk script for the benchmark: counts the requests each thread hands to a socket, so that
-- requests sent (not only those completed) are known, and prints one JSON line at the end.
-- Defining request() makes wrk ask Lua for every request; the request is built once.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  sent = 0
  req = wrk.format()
end

function request()
  sent = sent + 1
  return req
end

function done(summary, latency, requests)
  local s = 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"sent": %d, "completed": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p99": %d, "mean": %.1f}}\n',
    s, summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
