-- wrk: each request names a random one of SPREAD_N users in `x-user` (the header consistent
-- hashing hashes), so the hashing row spreads over the whole set, not one hot key.
local n = tonumber(os.getenv("SPREAD_N")) or 100
math.randomseed(os.time())

request = function()
  return wrk.format(nil, nil, { ["x-user"] = "user-" .. math.random(0, n - 1) })
end
