-- The bandit scenario, for measuring how well promptd learns: K templates (params.
-- templates: 8, 16 or 32) and as many kinds of situation, each with one best template
-- (expected reward 1) among others worth 0.1 to 0.6, and rewards with N(0, params.noise)
-- noise (default 0.2) in the event's `score`.
--
-- A kind of situation is what is asked (one of eight response patterns: a fresh alarm to
-- triage, a recurring fault, a how-to, a hazard to escalate, noise, slow degradation, a
-- recovery, a handover) about which equipment (with 16 and 32 templates, the alarms are
-- also split by group of equipment: 2 or 4 groups). The texts come from the alarm
-- generator (alarms.lua), so every kind is said many ways.
--
-- Each template's `about` describes the situation it is best for (params.aligned=no: a
-- shuffled description, so that only rewards tell them apart). Write the matching pack
-- with `promptctl simulate --scenario bandit --param templates=16 --write-pack DIR`.

local alarms = require "alarms"
local params = ...

local K = tonumber(params.templates or "8")
local noise = tonumber(params.noise or "0.2")
local aligned = (params.aligned or "yes") ~= "no"
local delay_ms = tonumber(params.delay_ms or "0")

local patterns = {
    { "a fresh alarm: how urgent it is and what to check first",
      { "new alarm: {text}", "{text} - how urgent is this?", "{text}; first time we see this" } },
    { "a recurring fault: why it keeps happening",
      { "{text} - {n} times in the last {h} hours", "recurring: {text} (again after reset)",
        "{text}; keeps coming back, what is the common cause?" } },
    { "a known fault: the procedure to clear it, step by step",
      { "{text} - what is the procedure to clear it?", "how do I reset this: {text}",
        "{text}; send the checklist for the night crew" } },
    { "a hazard or wide impact: who to call now",
      { "P1 incident: {text}, customers affected", "CRITICAL {text} - notify the duty manager",
        "{text}; safety team must be informed now" } },
    { "noise: a test, a flap or a duplicate to suppress",
      { "TEST ALARM: {text}", "{text} raised and cleared within {n}s",
        "duplicate of ticket {h}: {text}, flapping" } },
    { "slow degradation: maintenance to plan before it fails",
      { "{text}, trending up {n}% per week", "{text}; plan maintenance before winter",
        "gradual drift: {text} over the last {h} days" } },
    { "a recovery: verify and close",
      { "cleared: {text}", "{text} - restored, back in service after {h} min",
        "{text}; recovered, please verify before closing" } },
    { "a shift handover: summarise the open issues",
      { "handover: {text} still open at shift change", "daily report item: {text}",
        "summary for the morning meeting: {text}" } },
}

local groups = K <= 8 and 1 or K <= 16 and 2 or 4
assert(K == 8 * groups, "templates must be 8, 16 or 32")

-- The alarm kinds of each group of equipment (wind, then data centre; halves of each).
local members = {}
for g = 1, groups do members[g] = {} end
for i, kind in ipairs(alarms.kinds) do
    local g = math.floor((i - 1) * groups / #alarms.kinds) + 1
    table.insert(members[g], kind)
end

local function group_about(g)
    if groups == 1 then return "any equipment" end
    local first, last = members[g][1], members[g][#members[g]]
    return alarms.about(first) .. " to " .. alarms.about(last)
end

-- Kind c: pattern ((c - 1) % 8) + 1 about equipment group ceil(c / 8). Template c is the
-- best for kind c; the others' worth is drawn once.
local templates, worth = {}, {}
for c = 1, K do
    local d = aligned and c or (c % K) + 1
    local about = patterns[(d - 1) % 8 + 1][1] .. ", for " .. group_about(math.ceil(d / 8))
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
        local pattern, group = patterns[(c - 1) % 8 + 1], members[math.ceil(c / 8)]
        local alarm, attrs = alarms.say(group[math.random(#group)])
        local f = pattern[2][math.random(#pattern[2])]
        local text = f:gsub("{(%a+)}", function(k)
            if k == "text" then return alarm end
            return tostring(math.random(2, 60))
        end)
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

    -- And its features: what the text says least, the equipment, from the attributes the
    -- monitoring system sends (its domain, and its alarm code hashed into 8 buckets).
    pack_fields = [[
    feature_names = { "wind", "datacentre", "code0", "code1", "code2", "code3", "code4",
                      "code5", "code6", "code7" },
    features = function(msg)
        local attrs = msg.attrs or {}
        local f = { attrs.source == "scada" and 1 or 0,
                    attrs.source and attrs.source ~= "scada" and 1 or 0 }
        local bucket = attrs.code and tonumber(pd.hash(attrs.code):sub(-4), 16) % 8
        for b = 0, 7 do f[#f + 1] = b == bucket and 1 or 0 end
        return f
    end,
]],
}
