-- wrk: each request is for a random one of SPREAD_N routes of bench-load's mix (route i by i % 4:
-- prefix `/r<i>/`; host `h<i>.example.test`; regex `~/r<i>/\d+$`; wildcard host
-- `*.w<i>.example.test`), so a scaling row measures routing spread over the whole set.
local n = tonumber(os.getenv("SPREAD_N")) or 100
math.randomseed(os.time())

request = function()
  local i = math.random(0, n - 1)
  local kind = i % 4
  if kind == 1 then
    return wrk.format(nil, "/r" .. i .. "/x", { ["Host"] = "h" .. i .. ".example.test" })
  elseif kind == 2 then
    return wrk.format(nil, "/r" .. i .. "/123", {})
  elseif kind == 3 then
    return wrk.format(nil, "/r" .. i .. "/x", { ["Host"] = "a.w" .. i .. ".example.test" })
  end
  return wrk.format(nil, "/r" .. i .. "/x", {})
end
