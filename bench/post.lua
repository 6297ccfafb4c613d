-- wrk script: POST a key exchange with Gluon's content type. Keys rotate
-- over a few thousand valid keys so nothing is cached by accident.
local keys = {}
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local last = "AEIMQUYcgkosw480"
math.randomseed(os.time())
for i = 1, 4096 do
  local t = {}
  for j = 1, 42 do
    local n = math.random(1, 64)
    t[j] = alphabet:sub(n, n)
  end
  local n = math.random(1, 16)
  keys[i] = table.concat(t) .. last:sub(n, n) .. "="
end
local domains = {"ffmuc_welt", "ffmuc_muc_cty", "ffmuc_muc_nord", "ffwert_city"}
local i = 0
request = function()
  i = i + 1
  local body = '{"domain":"' .. domains[(i % #domains) + 1] .. '","public_key":"' .. keys[(i % #keys) + 1] .. '"}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
-- Count non-200 answers so a fast error path cannot pass for throughput.
local bad = 0
response = function(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_ms=%.3f p99_ms=%.3f non2xx=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
