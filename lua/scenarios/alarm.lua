-- The alarm scenario: the shipped alarm pack's four templates against a stream of wind
-- farm and data-centre alarms, some of them grouped in incidents. Each kind of alarm
-- needs one kind of answer, which the scenario knows and promptd must learn from the
-- operators' feedback:
--
--   diagnose   root_cause          (a slow fault: find why)
--   procedure  runbook             (a known fault with a standard procedure)
--   escalate   escalation_summary  (a trip or a hazard: get the specialist in)
--   triage     triage              (a nuisance or a low-stakes alarm: how urgent is it)
--
-- Feedback is what the alarm pack's reward function reads: resolved (more likely with a
-- good answer), a 1-5 rating (noisy) and sometimes time_to_resolve_s, after a delay of
-- params.delay_ms (default 200) on average.
--
--   promptctl simulate --scenario alarm [--param incidents=0.3] [--param delay_ms=200]
--                                       [--param framed=0.8]

local alarms = require "alarms"
local params = ...

local incidents = tonumber(params.incidents or "0.3")
local delay_ms = tonumber(params.delay_ms or "200")

local need_of = {
    gearbox_bearing_temp = "diagnose", generator_winding_temp = "diagnose",
    generator_vibration = "diagnose", transformer_oil_temp = "diagnose",
    rack_inlet_temp = "diagnose", fibre_crc = "diagnose", tower_vibration = "diagnose",
    storage_degraded = "diagnose",
    gearbox_oil_pressure = "procedure", pitch_motor_fault = "procedure",
    pitch_battery = "procedure", yaw_motor_overload = "procedure",
    ups_on_battery = "procedure", crac_failure = "procedure", pdu_overload = "procedure",
    link_flap = "procedure", bgp_down = "procedure",
    converter_grid_trip = "escalate", transformer_buchholz = "escalate",
    chiller_trip = "escalate", breaker_trip = "escalate", fire_preaction = "escalate",
    water_leak = "escalate",
    yaw_misalignment = "triage", anemometer_fault = "triage", ups_battery_eol = "triage",
    door_forced = "triage", genset_fuel_low = "triage", blade_icing = "triage",
    hydraulic_pressure = "triage", dc_power_redundancy = "triage", converter_igbt_temp = "diagnose",
}

-- Expected quality of each template's answer for each need (the hidden truth).
local quality = {
    diagnose = { triage = 0.35, root_cause = 0.9, runbook = 0.5, escalation_summary = 0.2 },
    procedure = { triage = 0.4, root_cause = 0.35, runbook = 0.9, escalation_summary = 0.25 },
    escalate = { triage = 0.3, root_cause = 0.3, runbook = 0.45, escalation_summary = 0.9 },
    triage = { triage = 0.85, root_cause = 0.3, runbook = 0.45, escalation_summary = 0.2 },
}

-- The alarm pack's eligibility rules, restated: runbook needs a text that names equipment
-- it knows, escalation_summary an incident or a critical alarm.
local equipment_words = { "gearbox", "齿轮箱", "pitch", "变桨", "generator", "发电机", "yaw",
    "偏航", "converter", "igbt", "变流器", "transformer", "主变", "变压器", "ups", "crac",
    "chiller", "cooling", "空调", "冷水机", "pdu", "breaker", "busbar", "配电", "switch",
    "router", "bgp", "link", "交换机", "链路" }

local function names_equipment(text)
    local lower = text:lower()
    for _, w in ipairs(equipment_words) do
        if lower:find(w, 1, true) then return true end
    end
    return false
end

local open_incidents = {}

-- How people and consoles say what kind of answer they need: a recurring fault asks why,
-- a known fault asks how, a hazard asks for people. params.framed (default 0.8) of the
-- alarms carry such a framing; the rest are the bare alarm, and only the kind of alarm
-- tells what it needs.
local framed = tonumber(params.framed or "0.8")
local framings = {
    diagnose = {
        "{text} - {n} times in the last {h} hours",
        "recurring: {text} (again, {n}x since the last reset)",
        "{text}; keeps coming back after every reset, why?",
        "{text} 反复出现，{h}小时内{n}次",
    },
    procedure = {
        "{text} - what is the procedure to clear it?",
        "how do I reset this: {text}",
        "{text}; need the steps for the night crew",
        "{text}，请给出处理步骤",
    },
    escalate = {
        "P1 incident: {text}, customers affected",
        "CRITICAL {text} - notify the duty manager",
        "{text}; safety team must be informed now",
        "紧急：{text}，请立即上报",
    },
    triage = {
        "new alarm: {text}",
        "{text} - how urgent is this?",
        "{text}; first time we see this",
        "{text}，请判断严重程度",
    },
}

local function frame(need, text)
    if math.random() >= framed then return text end
    local f = framings[need][math.random(#framings[need])]
    return (f:gsub("{(%a+)}", function(k)
        if k == "text" then return text end
        if k == "n" then return tostring(math.random(3, 9)) end
        return tostring(math.random(2, 24))
    end))
end

local function normal()
    return math.sqrt(-2 * math.log(1 - math.random())) * math.cos(2 * math.pi * math.random())
end

return {
    name = "alarm",
    templates = {
        { name = "triage" }, { name = "root_cause" }, { name = "runbook" },
        { name = "escalation_summary" },
    },

    situation = function(i)
        local kind = alarms.kinds[math.random(#alarms.kinds)]
        local text, attrs = alarms.say(kind)
        text = frame(need_of[alarms.name(kind)], text)
        local session
        if math.random() < incidents then
            -- An incident gathers a few alarms; a new one opens now and then.
            if #open_incidents == 0 or math.random() < 0.25 then
                open_incidents[#open_incidents + 1] = string.format("INC-%05d", i)
                if #open_incidents > 8 then table.remove(open_incidents, 1) end
            end
            session = open_incidents[math.random(#open_incidents)]
        end
        return { text = text, attrs = attrs, session = session, kind = alarms.name(kind),
                 need = need_of[alarms.name(kind)], critical = kind[3] >= 3 }
    end,

    eligible = function(s, template)
        if template == "runbook" then return names_equipment(s.text) end
        if template == "escalation_summary" then return s.session ~= nil or s.critical end
        return true
    end,

    quality = function(s, template)
        return quality[s.need][template]
    end,

    event = function(s, template, q)
        local ev = {
            resolved = math.random() < q,
            rating = math.max(1, math.min(5, math.floor(1 + 4 * q + 0.7 * normal() + 0.5))),
        }
        if ev.resolved and math.random() < 0.5 then
            ev.time_to_resolve_s = math.floor(600 + 3000 * (1 - q) * math.random())
        end
        return ev, delay_ms * (0.5 + math.random())
    end,
}
