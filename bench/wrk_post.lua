-- wrk script for the benchmarks: POST the bytes of the file named after "--" (binary bodies work), with the
-- headers given by -H; at the end print one line "WRK_JSON {...}" that bench/loadgen.py parses.
-- wrk builds the request once, after init(), so the per-request cost stays in C.

function init(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = file:read("*a")
  file:close()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %.1f, "p99_us": %.1f, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
