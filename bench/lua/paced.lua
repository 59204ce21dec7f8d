-- count.lua plus a pause after each response: with C connections and a pause of D ms the
-- offered rate is about C * 1000 / (D + response time) requests/s. wrk has no rate option
-- (wrk2 is not packaged by Debian); the harness measures the rate actually achieved.
-- Usage: wrk ... -s bench/lua/paced.lua URL -- DELAY_MS
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  sent = 0
  req = wrk.format()
  pause = tonumber(args[1] or "10")
end

function request()
  sent = sent + 1
  return req
end

function delay()
  return pause
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
