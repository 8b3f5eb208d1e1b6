-- promptd's helper library for policy packs:  local pd = require "promptd"
--
--   pd.interp(template, fields [, opts])  "${text} at ${attrs.site}" with escaped values
--   pd.truncate(s, max_bytes [, ellipsis]) cut at a UTF-8 character boundary
--   pd.escape.text / .json / .xml / .none  the escapers interp can use
--   pd.json.encode(v), pd.json.decode(s), pd.json.null
--   pd.hash(s [, seed])  16 hex digits, the same on every machine (XXH64)
--   pd.bucket(s, n)      1..n, stable for s (A/B splits, sampling)
--   pd.log.info(...), .warn, .error, .debug   into promptd's log, tagged with the pack
--   pd.get(t, "a.b.c")   nested field, or nil
--
-- Everything here runs inside the pack's sandbox, under its budget.

local core = require "promptd.core"

local M = {}

M.json = { encode = core.json_encode, decode = core.json_decode, null = core.null }
M.hash = core.hash
M.bucket = core.bucket

-- The pack's name, for log lines; init.lua may set it with pd.set_pack_name.
local pack_name = "pack"
function M.set_pack_name(name) pack_name = tostring(name) end

local function log_at(level)
    return function(...)
        local parts = table.pack(...)
        for i = 1, parts.n do parts[i] = tostring(parts[i]) end
        core.log(level, pack_name, table.concat(parts, " ", 1, parts.n))
    end
end
M.log = { error = log_at("error"), warn = log_at("warn"), info = log_at("info"),
          debug = log_at("debug") }

-- truncate(s, max [, ellipsis]): at most max bytes, never splitting a character. The
-- ellipsis, when given, is counted within max and appended only if s was cut.
function M.truncate(s, max, ellipsis)
    return core.truncate(tostring(s), max, ellipsis)
end

-- Escapers for interp. "text" (the default) keeps a value on one line and stops it from
-- posing as template syntax: control characters become spaces and "${" is defused.
M.escape = {
    none = function(s) return s end,
    text = core.escape_text,
    json = function(s)
        local quoted = core.json_encode(s)
        return quoted:sub(2, -2)
    end,
    xml = function(s)
        if not s:find("[&<>\"']") then return s end
        return (s:gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;",
                                      ['"'] = "&quot;", ["'"] = "&apos;" }))
    end,
}

-- get(t, "a.b.c"): t.a.b.c, or nil if any step is missing.
function M.get(t, path)
    for key in path:gmatch("[^%.]+") do
        if type(t) ~= "table" then return nil end
        t = t[key]
    end
    return t
end

-- A template is parsed once into literal strings and placeholders; templates are
-- usually literals, so the cache stays small, and it is bounded for packs that build
-- templates on the fly.
local compiled, ncompiled = {}, 0

local function compile(template)
    local parts, pos = {}, 1
    while true do
        local s, e, path, fallback = template:find("%${([%w_%.]+)|?([^}]*)}", pos)
        if not s then break end
        parts[#parts + 1] = template:sub(pos, s - 1)
        local keys = {}
        for key in path:gmatch("[^%.]+") do keys[#keys + 1] = key end
        parts[#parts + 1] = { keys = keys, path = path,
                              fallback = fallback ~= "" and fallback or nil }
        pos = e + 1
    end
    parts[#parts + 1] = template:sub(pos)
    if ncompiled >= 256 then compiled, ncompiled = {}, 0 end
    compiled[template], ncompiled = parts, ncompiled + 1
    return parts
end

local function lookup(fields, keys)
    local v = fields
    for i = 1, #keys do
        if type(v) ~= "table" then return nil end
        v = v[keys[i]]
    end
    return v
end

-- interp(template, fields [, opts]): replaces each ${path} with the value at that path
-- in fields (dots reach into tables), converted with tostring, escaped with
-- opts.escape (a name or a function; default "text") and cut to opts.max bytes
-- (default 2000). ${path|fallback} gives a fallback for a missing value; a missing value
-- without one is an error, so a typo in a template fails its load-time check.
function M.interp(template, fields, opts)
    local escape, max = M.escape.text, 2000
    if opts then
        escape = opts.escape or escape
        if type(escape) == "string" then
            escape = M.escape[escape] or error("unknown escape '" .. escape .. "'", 2)
        end
        max = opts.max or max
    end
    local parts = compiled[template] or compile(template)
    local out = {}
    for i = 1, #parts do
        local part = parts[i]
        if type(part) == "string" then
            out[i] = part
        else
            local v = lookup(fields, part.keys)
            if v == nil or v == core.null then
                out[i] = part.fallback or error("interp: no value for ${" .. part.path .. "}", 2)
            else
                out[i] = core.truncate(escape(tostring(v)), max, "…")
            end
        end
    end
    return table.concat(out)
end

return M
