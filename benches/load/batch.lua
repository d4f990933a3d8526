-- wrk script: POST pre-generated batch bodies in turn (one file per body, listed in BODIES_LIST).
-- With DELAY_MS set, each connection waits that long between requests (paced load for latency).

local requests = {}
local counter = 0
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")

function init(args)
  local list = assert(io.open(os.getenv("BODIES_LIST"), "r"))
  local headers = { ["Content-Type"] = "application/json" }
  for path in list:lines() do
    local f = assert(io.open(path, "rb"))
    local body = f:read("*a")
    f:close()
    requests[#requests + 1] = wrk.format("POST", "/ingest/v1/batch", headers, body)
  end
  list:close()
  -- Threads start at different offsets so they do not send the same body at once.
  counter = math.random(#requests)
end

function request()
  counter = counter % #requests + 1
  return requests[counter]
end

function delay()
  return delay_ms
end

function done(summary, latency, requests)
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
