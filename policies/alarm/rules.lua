-- Domain knowledge shared by the alarm templates: what kind of equipment and site an
-- alarm is about, and how severe it is. Works on normalised text (lower case).

local M = {}

-- Equipment kinds, each with the words that name it (English and Chinese).
local equipment = {
    { "gearbox", { "gearbox", "齿轮箱" } },
    { "pitch system", { "pitch", "变桨" } },
    { "generator", { "generator", "发电机" } },
    { "yaw system", { "yaw", "偏航" } },
    { "converter", { "converter", "igbt", "变流器" } },
    { "transformer", { "transformer", "主变", "变压器" } },
    { "UPS", { "ups" } },
    { "cooling (CRAC)", { "crac", "chiller", "cooling", "空调", "冷水机" } },
    { "power distribution", { "pdu", "breaker", "busbar", "配电" } },
    { "network", { "switch", "router", "bgp", "link", "交换机", "链路" } },
}

local function find_equipment(normalized)
    for _, kind in ipairs(equipment) do
        for _, word in ipairs(kind[2]) do
            if normalized:find(word, 1, true) then return kind[1] end
        end
    end
    return "equipment"
end

-- Several templates ask about the same message; alarm streams repeat themselves, so the
-- answers are remembered (a bounded cache, emptied when full).
local known, nknown = {}, 0

function M.equipment(normalized)
    local kind = known[normalized]
    if kind then return kind end
    kind = find_equipment(normalized)
    if nknown >= 4096 then known, nknown = {}, 0 end
    known[normalized], nknown = kind, nknown + 1
    return kind
end

function M.domain(normalized)
    if normalized:find("wtg", 1, true) or normalized:find("turbine", 1, true) or
        normalized:find("风机", 1, true) then
        return "wind"
    end
    if normalized:find("rack", 1, true) or normalized:find("crac", 1, true) or
        normalized:find("ups", 1, true) or normalized:find("pdu", 1, true) then
        return "datacentre"
    end
    return "other"
end

local severity_words = { info = 0, minor = 1, warning = 1, major = 2, critical = 3,
                         emergency = 4 }

-- 0 (informational) .. 4 (emergency), from attrs.severity or words in the text.
function M.severity(msg)
    local s = msg.attrs and msg.attrs.severity
    if type(s) == "number" then return math.max(0, math.min(4, s)) end
    if type(s) == "string" and severity_words[s:lower()] then
        return severity_words[s:lower()]
    end
    if msg.normalized:find("trip", 1, true) or msg.normalized:find("fire", 1, true) or
        msg.normalized:find("跳闸", 1, true) then
        return 3
    end
    return 1
end

return M
