-- wrk script of `make bench` (Envoy CPU per proxied request): a fixed, deterministic mix of 512
-- distinct requests sent round-robin, the same for every variant. They exercise the contracts:
-- paths that hit tests/bench/heavy-contract.yaml's route rules across the whole table (late rules
-- included, with ids, uuids and query strings), the default contract's /healthz /readyz /metrics,
-- unmatched paths, several methods, and the request headers the heavy contract turns into labels.
-- `x-bench-status` makes the upstream answer 404 or 503 for a few requests (status and error_type
-- labels). Deterministic (a fixed generator, not math.random), so every run and thread sends the same.

local requests = {}
local n = 0

local seed = 12345
local function rand(k)           -- 1..k (Park-Miller: exact in doubles)
  seed = (seed * 16807) % 2147483647
  return (seed % k) + 1
end
local function pick(t) return t[rand(#t)] end

local resources = {"users", "orders", "carts", "products", "payments", "invoices", "shipments",
                   "reviews", "coupons", "sessions"}
local methods = {"GET", "GET", "GET", "GET", "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE", "PATCH"}
local tiers = {"free", "pro", "enterprise", "trial"}          -- trial is not allowed: _OTHER
local versions = {"1.0.3", "1.1.0", "1.2.7", "2.0.0", "2.0.1"}
local regions = {"eu-west-1", "us-east-1", "ap-south-1"}
local clients = {"web", "ios", "android"}
local agents = {"Mozilla/5.0 (X11; Linux x86_64)", "okhttp/4.12.0", "python-requests/2.32.3"}

local function path()
  local r = rand(20)
  local res = pick(resources)
  local id = tostring(rand(99999))
  if r <= 2 then return pick({"/healthz", "/readyz", "/metrics", "/"})
  elseif r == 3 then return pick({"/static/app.js", "/assets/logo.svg", "/files/report.png", "/files/site.css", "/graphql"})
  elseif r == 4 then return "/nope/" .. id                      -- unmatched
  elseif r <= 8 then return "/api/v1/" .. res .. (rand(3) == 1 and "?page=" .. rand(9) or "")
  elseif r <= 13 then return "/api/v1/" .. res .. "/" .. id
  elseif r <= 15 then return "/api/v1/" .. res .. "/" .. id .. "/history"
  else
    return string.format("/api/v%d/%s/%s/%08x-%04x-%04x-%04x-%012x", 1 + rand(2), res,
      pick({"items", "notes", "events"}), rand(2147483647), rand(65535), rand(65535), rand(65535), rand(2147483647))
  end
end

-- Built in init(): wrk adds its Host header to wrk.headers only then, and wrk.format() called at
-- load time would make requests without one, which Envoy's HTTP/1.1 codec rejects with a 400
-- before any HTTP filter runs.
function init(args)
  for i = 1, 512 do
    local headers = {["x-tenant-tier"] = pick(tiers), ["x-client-version"] = pick(versions),
                     ["x-region"] = pick(regions), ["user-agent"] = pick(agents)}
    if rand(2) == 1 then headers["x-api-client"] = pick(clients) end
    if rand(4) == 1 then headers["x-canary"] = "true" end
    if rand(3) == 1 then headers["x-forwarded-proto"] = "https" end
    local s = rand(25)
    if s == 1 then headers["x-bench-status"] = "404" elseif s == 2 then headers["x-bench-status"] = "503" end
    requests[i] = wrk.format(pick(methods), path(), headers)
  end
end

function request()
  n = n % #requests + 1
  return requests[n]
end
