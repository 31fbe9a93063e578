-- wrk: each request is for a random one of SPREAD_N routes laid out as `bench-load ... services`
-- makes them (SPREAD_M routes per service, route j of service i on `/s<i>/r<j>/`), so every
-- route, and so every metrics series, is used.
local n = tonumber(os.getenv("SPREAD_N")) or 10000
local m = tonumber(os.getenv("SPREAD_M")) or 10
math.randomseed(os.time())

request = function()
  local i = math.random(0, n - 1)
  return wrk.format(nil, "/s" .. math.floor(i / m) .. "/r" .. (i % m) .. "/x", {})
end

-- SPREAD_PACE_MS: each connection waits this long after an answer before its next request, so
-- the offered load stays below what the node can take (what a node with headroom sees).
local pace = tonumber(os.getenv("SPREAD_PACE_MS"))
if pace and pace > 0 then
  delay = function() return pace end
end
