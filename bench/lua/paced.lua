-- count.lua plus a pause after each response: with C connections and a pause of D ms the
-- offered rate is about C * 1000 / (D + response time) requests/s. wrk has no rate option
-- (wrk2 is not packaged by Debian); the harness measures the rate actually achieved.
-- Usage: wrk ... -s bench/lua/paced.lua URL -- DELAY_MS
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "count.lua")

local count_init = init

function init(args)
  count_init(args)
  pause = tonumber(args[1] or "10")
end

function delay()
  return pause
end
