-- wrk script for the alert-service benchmark: one alert per request, a unique key per request.
--
--   wrk -t2 -c32 -d15s -s ingest.lua http://127.0.0.1:PORT -- <mode> <token> <run-prefix>
--
-- mode "service":       POST /v1/events (Bearer token), one event, expects 202
-- mode "alertmanager":  POST /api/v2/alerts, a one-alert list, expects 200
-- The key is <run-prefix>-<thread id>-<per-thread counter>: unique across threads and requests, so the service never
-- answers a duplicate. done() prints one JSON line starting with "WRKRESULT " (latencies in microseconds).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  mode = args[1]
  token = args[2]
  prefix = args[3]
  counter = 0
  ok = 0
  bad = 0
  dup = 0
  statuses = {}
  wrk.headers["Content-Type"] = "application/json"
  if mode == "service" then
    path = "/v1/events"
    expected = 202
    wrk.headers["Authorization"] = "Bearer " .. token
  else
    path = "/api/v2/alerts"
    expected = 200
  end
end

function request()
  counter = counter + 1
  local key = prefix .. "-" .. tid .. "-" .. counter
  local body
  if mode == "service" then
    body = '{"idempotency_key":"' .. key .. '","type":"task_failure","severity":"critical",'
      .. '"dag_id":"bench_dag","task_id":"run_batch_processing","run_id":"' .. key .. '",'
      .. '"try_number":1,"max_tries":4,"exception":"ConnectionError: bench",'
      .. '"labels":{"team":"bench"}}'
  else
    body = '[{"labels":{"alertname":"bench","dag_id":"bench_dag","key":"' .. key .. '"},'
      .. '"annotations":{"exception":"ConnectionError: bench"}}]'
  end
  return wrk.format("POST", path, nil, body)
end

function response(status, headers, body)
  if status == expected then
    ok = ok + 1
    if mode == "service" and body and body:find('"duplicate":true', 1, true) then dup = dup + 1 end
  else
    bad = bad + 1
    local k = tostring(status)
    statuses[k] = (statuses[k] or 0) + 1
  end
end

function done(summary, latency, requests)
  local total_ok, total_bad, total_dup = 0, 0, 0
  local merged = {}
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_bad = total_bad + thread:get("bad")
    total_dup = total_dup + thread:get("dup")
    local st = thread:get("statuses")
    if st then
      for k, v in pairs(st) do merged[k] = (merged[k] or 0) + v end
    end
  end
  local parts = {}
  for k, v in pairs(merged) do table.insert(parts, '"' .. k .. '":' .. v) end
  local e = summary.errors
  io.write(string.format(
    'WRKRESULT {"duration_us":%d,"requests":%d,"ok":%d,"duplicates":%d,"bad":%d,"bad_statuses":{%s},'
      .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.duration, summary.requests, total_ok, total_dup, total_bad, table.concat(parts, ","),
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
