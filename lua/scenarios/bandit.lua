-- The bandit scenario, for measuring how well promptd learns: K templates (params.
-- templates: 8, 16 or 32) and as many kinds of alarm (from the alarm generator), each
-- with one best template (expected reward 1) among others worth 0.1 to 0.6, and rewards
-- with N(0, params.noise) noise (default 0.2) in the event's `score`.
--
-- Each template's `about` describes the alarm it is best for (params.aligned=no: a
-- shuffled description, so that only rewards tell them apart). Write the matching pack
-- with `promptctl simulate --scenario bandit --param templates=16 --write-pack DIR`.

local alarms = require "alarms"
local params = ...

local K = tonumber(params.templates or "8")
assert(K >= 2 and K <= #alarms.kinds, "templates must be between 2 and " .. #alarms.kinds)
local noise = tonumber(params.noise or "0.2")
local aligned = (params.aligned or "yes") ~= "no"
local delay_ms = tonumber(params.delay_ms or "0")

-- K kinds spread over both domains.
local kinds = {}
local step = #alarms.kinds / K
for c = 1, K do kinds[c] = alarms.kinds[math.floor((c - 1) * step) + 1] end

-- Template c is the best for kind c; the others' worth is drawn once.
local templates, worth = {}, {}
for c = 1, K do
    local about = alarms.about(kinds[aligned and c or (c % K) + 1])
    templates[c] = { name = string.format("t%02d", c), about = "The answer for " .. about }
    worth[c] = {}
    for a = 1, K do worth[c][a] = 0.1 + 0.5 * math.random() end
    worth[c][c] = 1.0
end

local index = {}
for c, t in ipairs(templates) do index[t.name] = c end

local function normal()
    return math.sqrt(-2 * math.log(1 - math.random())) * math.cos(2 * math.pi * math.random())
end

return {
    name = "bandit",
    templates = templates,

    situation = function(i)
        local c = math.random(K)
        local text, attrs = alarms.say(kinds[c])
        return { text = text, attrs = attrs, kind = c }
    end,

    quality = function(s, template)
        local a = index[template]
        return a and worth[s.kind][a] or 0
    end,

    event = function(s, template, q)
        return { score = q + noise * normal() }, delay_ms
    end,

    -- The pack's reward for `promptctl simulate --write-pack`.
    reward = "return tonumber(event.score)",
}
