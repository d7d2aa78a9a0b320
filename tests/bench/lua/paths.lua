-- wrk script of `make bench` (memory after many distinct paths): GET /r/<k> for k = 0 .. PATHS-1
-- round-robin, so every path is requested about TOTAL / PATHS times. wrk runs by duration:
-- tests/bench/memory.py interrupts it as soon as Envoy has served TOTAL requests (no response()
-- callback here, to keep the client cheap). usage: wrk -t1 ... -s paths.lua URL -- TOTAL PATHS
local paths = 100000
local sent = 0

function init(args)
  paths = tonumber(args[2]) or paths
end

function request()
  local k = sent % paths
  sent = sent + 1
  return wrk.format("GET", "/r/" .. k)
end
