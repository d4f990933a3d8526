-- wrk script: POST pre-generated bodies in turn (one file per body, listed in BODIES_LIST).
-- A listing line is the body's file, optionally followed (tab-separated) by the request path
-- and `Name: value` headers of its own: `file[\tpath[\theader...]]`. By default a body goes
-- to /ingest/v1/batch as JSON.
-- With DELAY_MS set, each connection waits that long between requests (paced load for latency).

local requests = {}
local counter = 0
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")

function init(args)
  local list = assert(io.open(os.getenv("BODIES_LIST"), "r"))
  for entry in list:lines() do
    local fields = {}
    for field in entry:gmatch("[^\t]+") do
      fields[#fields + 1] = field
    end
    local headers = { ["Content-Type"] = "application/json" }
    for i = 3, #fields do
      local name, value = fields[i]:match("^([^:]+):%s*(.*)$")
      headers[name] = value
    end
    local f = assert(io.open(fields[1], "rb"))
    local body = f:read("*a")
    f:close()
    requests[#requests + 1] = wrk.format("POST", fields[2] or "/ingest/v1/batch", headers, body)
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
