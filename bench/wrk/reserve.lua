-- wrk script: POST /v1/reservations with a fresh idempotency key per request.
-- Arguments: <api key> <tenant> <number of agents> <mode: reserve|lifecycle> <run tag>
-- The run tag keeps idempotency keys unique across runs (Lua's random
-- numbers are not seeded, so they repeat from one wrk run to the next).
-- In lifecycle mode a successful reserve is followed by the commit of that
-- reservation, sent by the same wrk thread (Lua state is per thread); a
-- reservation whose commit is overtaken by another response stays ACTIVE,
-- which the ledger check after each cell accounts for. Reservations live an
-- hour: the reserve-only cells leave tens of thousands of them ACTIVE, and
-- with a short TTL their expiry would run under the cells that follow.

local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("thread_number", #threads)
end

function init(args)
    api_key = args[1]
    tenant = args[2]
    agents = tonumber(args[3])
    mode = args[4]
    thread_tag = string.format("%s-t%d", args[5], thread_number)
    counter = 0
    pending = nil
    commits = 0
    headers = { ["X-Cycles-API-Key"] = api_key, ["Content-Type"] = "application/json" }
end

request = function()
    counter = counter + 1
    if pending ~= nil then
        local id = pending
        pending = nil
        local body = string.format(
            '{"idempotency_key":"%s-c%d","actual":{"unit":"USD_MICROCENTS","amount":1}}', thread_tag, counter)
        return wrk.format("POST", "/v1/reservations/" .. id .. "/commit", headers, body)
    end
    local body = string.format(
        '{"idempotency_key":"%s-r%d","ttl_ms":3600000,"subject":{"tenant":"%s","agent":"a%d"},' ..
        '"action":{"kind":"llm.completion","name":"bench"},"estimate":{"unit":"USD_MICROCENTS","amount":1}}',
        thread_tag, counter, tenant, math.random(1, agents))
    return wrk.format("POST", "/v1/reservations", headers, body)
end

response = function(status, headers, body)
    if mode == "lifecycle" and status == 200 then
        local id = string.match(body, '"reservation_id": ?"([%w_]+)"')
        if id ~= nil then
            pending = id
        else
            commits = commits + 1
        end
    end
end

done = function(summary, latency, requests)
    local errors = summary.errors
    io.write(string.format(
        'WRK_RESULT {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
        '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
        summary.requests, summary.duration, errors.status,
        errors.connect + errors.read + errors.write + errors.timeout,
        latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
