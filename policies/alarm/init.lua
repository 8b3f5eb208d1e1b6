-- Policy pack "alarm": wind-farm and data-centre alarms.
--
-- The templates are the candidate ways of asking a language model about an alarm; the
-- policy learns which one gets the best answer for which kind of alarm. The reward
-- function turns the operators' feedback on an answer into a number.
--
-- The message a template sees (msg):
--   msg.id, msg.text (as received), msg.normalized (lower-case, numbers masked),
--   msg.session (the incident, or nil), msg.attrs (the prompt's attrs; {} if none)

local pd = require "promptd"
local rules = require "rules"

pd.set_pack_name("alarm")

-- What every prompt says about the alarm, whatever the template.
local function header(msg)
    return pd.interp(
        "Alarm from ${attrs.site|an unnamed site} (${attrs.source|monitoring}), " ..
        "severity ${attrs.severity|unknown}:\n${text}", msg)
end

local templates = {
    {
        name = "triage",
        about = "Decide quickly how urgent the alarm is and what to check first.",
        render = function(msg, ctx)
            return header(msg) .. "\n\n" ..
                "You are the on-call engineer's assistant. In at most five lines: rate the " ..
                "urgency (page now / next shift / informational), name the most likely " ..
                "affected " .. rules.equipment(msg.normalized) .. " component, and give the " ..
                "first check to make on site or in SCADA."
        end,
    },
    {
        name = "root_cause",
        about = "Reason about the most likely root causes of the alarm and how to confirm each.",
        render = function(msg, ctx)
            return header(msg) .. "\n\n" ..
                "List the three most likely root causes, most likely first. For each, give " ..
                "the evidence that would confirm or rule it out (trend, related alarm, " ..
                "measurement) and how long it usually takes to develop."
        end,
    },
    {
        name = "runbook",
        about = "Point to the runbook procedure for this kind of equipment fault, step by step.",
        eligible = function(msg)
            return rules.equipment(msg.normalized) ~= "equipment"
        end,
        render = function(msg, ctx)
            local kind = rules.equipment(msg.normalized)
            return header(msg) .. "\n\n" ..
                "Following the standard " .. kind .. " runbook, write the numbered steps " ..
                "to make safe, diagnose and restore service. Mark the steps that need " ..
                "lock-out/tag-out or a second person."
        end,
    },
    {
        name = "escalation_summary",
        about = "Summarise the incident for escalation to a specialist or the duty manager.",
        eligible = function(msg)
            return msg.session ~= nil or rules.severity(msg) >= 3
        end,
        render = function(msg, ctx)
            return header(msg) .. "\n\n" ..
                pd.interp("This alarm belongs to incident ${session|(none)}. ", msg) ..
                "Write a handover summary for the specialist on call: what happened, the " ..
                "impact on generation or on hosted services, what has been ruled out, and " ..
                "the decision needed from them. Plain sentences, no more than 120 words."
        end,
    },
}

-- Feedback events carry any of: resolved (bool), escalated (bool), time_to_resolve_s
-- (number), rating (1..5 from the operator). An event with none of them scores nothing.
local function reward(event, decision)
    local r, seen = 0, false
    if event.resolved ~= nil then
        seen = true
        r = r + (event.resolved and 1 or -0.5)
    end
    if event.escalated then
        seen = true
        r = r - 0.5
    end
    if type(event.time_to_resolve_s) == "number" then
        seen = true
        -- Within the hour is worth up to +0.5; beyond, nothing more is lost.
        r = r + 0.5 * math.max(0, 1 - event.time_to_resolve_s / 3600)
    end
    if type(event.rating) == "number" then
        seen = true
        r = r + (math.min(5, math.max(1, event.rating)) - 3) / 4
    end
    if not seen then return nil end
    return r
end

return {
    name = "alarm",
    templates = templates,
    reward = reward,
    feature_names = { "severity", "is_wind", "is_datacentre", "has_session" },
    features = function(msg)
        return {
            rules.severity(msg) / 4,
            rules.domain(msg.normalized) == "wind" and 1 or 0,
            rules.domain(msg.normalized) == "datacentre" and 1 or 0,
            msg.session and 1 or 0,
        }
    end,
    self_test = function(pack)
        assert(reward({ resolved = true, time_to_resolve_s = 0, rating = 5 }, {}) == 2)
        assert(reward({ escalated = true }, {}) == -0.5)
        assert(reward({ comment = "thanks" }, {}) == nil)
        assert(rules.equipment("wtg-<num> gearbox bearing temperature <num>") == "gearbox")
        assert(rules.equipment("ups-<num> on battery") == "UPS")
    end,
}
