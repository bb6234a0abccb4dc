-- wrk script for `make bench`: POST /api/v1/initiate-call/ through the REST
-- gateway, every request to a distinct phone number, then one JSON line with
-- the results (read by scripts/bench.sh).
--
--   BENCH_BASE=1300000000000 BENCH_CAMPAIGN=1 BENCH_TOKEN=dev-token-12345 \
--     wrk -t2 -c16 -d10s -s bench/initiate_call.lua http://127.0.0.1:27000
--
-- Numbers: thread t (0-based) sends +(BENCH_BASE + t * 100000000 + i) for
-- its i-th request, so threads never collide. BENCH_PATH and BENCH_METHOD
-- switch the same script to another request without a body (the gateway's
-- static ceilings: OPTIONS preflight, GET /health/).

local base = tonumber(os.getenv("BENCH_BASE") or "1300000000000")
local campaign = tonumber(os.getenv("BENCH_CAMPAIGN") or "1")
local token = os.getenv("BENCH_TOKEN") or "dev-token-12345"
local path = os.getenv("BENCH_PATH") or "/api/v1/initiate-call/"
local method = os.getenv("BENCH_METHOD") or "POST"

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local seq = 0
local first
local headers

function init(args)
  first = base + tid * 100000000
  if method == "POST" then
    headers = {["Content-Type"] = "application/json", ["X-Auth-Token"] = token}
  else
    headers = {["X-Auth-Token"] = token, ["Origin"] = "http://bench.local",
               ["Access-Control-Request-Method"] = "POST"}
  end
end

function request()
  if method ~= "POST" then
    return wrk.format(method, path, headers, nil)
  end
  seq = seq + 1
  local body = string.format('{"phone_number":"+%.0f","campaign_id":%d}', first + seq, campaign)
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  local status_errors = e.status
  local secs = summary.duration / 1e6
  local good = summary.requests - status_errors - e.connect - e.read - e.write - e.timeout
  io.write(string.format(
    '{"requests":%d,"ok":%d,"non_2xx":%d,"socket_errors":%d,"duration_s":%.3f,' ..
    '"throughput_per_s":%.1f,"requests_per_s":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,' ..
    '"p99_ms":%.3f,"max_ms":%.3f,"mean_ms":%.3f}\n',
    summary.requests, good, status_errors, e.connect + e.read + e.write + e.timeout, secs,
    good / secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, latency.mean / 1000))
end
