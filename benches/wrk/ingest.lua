-- wrk script: POST JSON readings to anomalyd.
--   STREAMS=1 BATCH=100 wrk -t1 -c4 -d10s --latency -s benches/wrk/ingest.lua http://127.0.0.1:8080
-- Each wrk thread writes its own streams (t<thread>-s<n>), round-robin. Timestamps are
-- equal within a stream (allowed: only older ones are refused), so concurrent
-- connections never trip the ordering check.
local streams = tonumber(os.getenv("STREAMS") or "1")
local batch = tonumber(os.getenv("BATCH") or "1")
local next_tid = 0
local counter = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

function request()
  counter = counter + 1
  local s = counter % streams
  local parts = {}
  for i = 1, batch do
    local x = counter * batch + i
    parts[i] = string.format('{"timestamp":1700000000,"value":%.4f}', 100 + 20 * math.sin(x / 7.6) + (x % 13) / 3)
  end
  local body = '{"readings":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/v1/streams/t" .. tid .. "-s" .. s .. "/readings",
    { ["Content-Type"] = "application/json" }, body)
end

function done(summary, latency, requests)
  io.write(string.format("requests/s %.1f  readings/s %.1f  p50 %.2f ms  p99 %.2f ms  non-2xx %d\n",
    summary.requests / (summary.duration / 1e6),
    summary.requests * batch / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status))
end
