-- wrk: each request presents the key of a random one of SPREAD_N consumers (`key-<i>`, as
-- bench-load makes them), so a scaling row measures lookups spread over the whole set, not one
-- hot entry.
local n = tonumber(os.getenv("SPREAD_N")) or 100
math.randomseed(os.time())

request = function()
  return wrk.format(nil, nil, { ["apikey"] = "key-" .. math.random(0, n - 1) })
end
