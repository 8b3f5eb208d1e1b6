-- A generator of realistic alarm texts for the simulator's scenarios: wind farms and data
-- centres, 32 kinds of situation (equipment and fault), each said several ways (terse
-- SCADA codes, sentences, upper-case monitoring lines, Chinese), with unit numbers,
-- readings and sites drawn at random.
--
--   local alarms = require "alarms"
--   local kind = alarms.kinds[i]      -- { name, domain, severity, about, phrasings }
--   local text, attrs = alarms.say(kind)
--
-- Uses math.random only, so `promptctl simulate --seed` makes it reproducible.

local M = {}

local wind_sites = { "North Ridge", "Haiyang", "Kilbraur", "Cuesta Alta", "Meerwind" }
local dc_sites = { "FRA1", "AMS3", "SHA2", "DUB1", "IAD5" }

-- name, domain, severity (0..4), about (what an answer to it is about), phrasings.
-- In phrasings: {n} a unit number, {v} a reading, {r} a rack or row.
M.kinds = {
    { "gearbox_bearing_temp", "wind", 2, "gearbox bearing overheating on a wind turbine", {
        "WTG-{n} gearbox bearing temp high {v}C",
        "Gearbox bearing overheating on WTG-{n} ({v} °C)",
        "[MAJOR] WTG{n} GBX BRG TEMP {v}C > LIMIT",
        "{n}号风机齿轮箱轴承温度高 {v}℃" } },
    { "gearbox_oil_pressure", "wind", 2, "low gearbox oil pressure on a wind turbine", {
        "WTG-{n} gearbox oil pressure low {v} bar",
        "Low gearbox lubrication pressure, turbine {n}",
        "[MAJOR] WTG{n} GBX OIL PRESS LO" } },
    { "pitch_motor_fault", "wind", 3, "a pitch motor fault on a wind turbine blade", {
        "WTG-{n} pitch motor fault blade {r}",
        "Pitch drive failure on turbine {n}, axis {r}",
        "[CRITICAL] WTG{n} PITCH AX{r} MOTOR FLT",
        "{n}号风机变桨电机故障" } },
    { "pitch_battery", "wind", 2, "a weak pitch emergency battery on a wind turbine", {
        "WTG-{n} pitch battery voltage low {v}V",
        "Pitch backup battery test failed on WTG {n}",
        "[MAJOR] WTG{n} PITCH BATT TEST FAIL" } },
    { "generator_winding_temp", "wind", 2, "generator winding overheating on a wind turbine", {
        "WTG-{n} generator winding temperature {v}C",
        "Generator stator winding hot on turbine {n} ({v} °C)",
        "[MAJOR] WTG{n} GEN WDG TEMP HI",
        "{n}号风机发电机绕组温度高" } },
    { "generator_vibration", "wind", 2, "high generator bearing vibration on a wind turbine", {
        "WTG-{n} generator bearing vibration {v} mm/s",
        "Vibration alarm, generator drive-end bearing, WTG {n}",
        "[MAJOR] WTG{n} GEN DE VIB HI" } },
    { "yaw_misalignment", "wind", 1, "a wind turbine not facing the wind", {
        "WTG-{n} yaw misalignment {v} deg",
        "Turbine {n} yaw error above limit for 10 min",
        "[MINOR] WTG{n} YAW ERR {v}DEG",
        "{n}号风机偏航对风偏差大" } },
    { "yaw_motor_overload", "wind", 2, "a yaw motor overload on a wind turbine", {
        "WTG-{n} yaw motor overload",
        "Yaw drive motor tripped on thermal overload, turbine {n}",
        "[MAJOR] WTG{n} YAW MOT OVLD" } },
    { "converter_igbt_temp", "wind", 3, "converter power electronics overheating", {
        "WTG-{n} converter IGBT temp {v}C",
        "Converter module overtemperature on WTG {n}",
        "[CRITICAL] WTG{n} CONV IGBT TEMP {v}C",
        "{n}号风机变流器IGBT温度高" } },
    { "converter_grid_trip", "wind", 4, "a turbine tripped off the grid by its converter", {
        "WTG-{n} converter trip grid fault",
        "Turbine {n} tripped: converter grid-side fault, {v} V dip",
        "[EMERGENCY] WTG{n} CONV TRIP GRID FLT" } },
    { "transformer_oil_temp", "wind", 2, "a hot turbine transformer", {
        "WTG-{n} transformer oil temperature {v}C",
        "Pad-mount transformer of turbine {n} running hot",
        "[MAJOR] WTG{n} TRAFO OIL TEMP HI",
        "{n}号风机箱变油温高" } },
    { "transformer_buchholz", "wind", 4, "a gas or oil surge alarm in a transformer", {
        "WTG-{n} transformer Buchholz alarm",
        "Buchholz relay operated on the transformer of WTG {n}",
        "[EMERGENCY] WTG{n} TRAFO BUCHHOLZ TRIP" } },
    { "anemometer_fault", "wind", 1, "a failed wind sensor on a turbine nacelle", {
        "WTG-{n} anemometer signal lost",
        "Wind speed sensor frozen at {v} m/s on turbine {n}",
        "[MINOR] WTG{n} ANEMO FLT" } },
    { "tower_vibration", "wind", 3, "high tower or nacelle vibration on a wind turbine", {
        "WTG-{n} tower vibration high {v} mm/s",
        "Nacelle acceleration above limit on WTG {n}",
        "[CRITICAL] WTG{n} TWR VIB HI" } },
    { "blade_icing", "wind", 2, "ice detected on wind turbine blades", {
        "WTG-{n} blade ice detected",
        "Icing suspected on rotor of turbine {n} ({v} C ambient)",
        "[MAJOR] WTG{n} ICE DETECT",
        "{n}号风机叶片结冰" } },
    { "hydraulic_pressure", "wind", 2, "low hydraulic pressure in a turbine brake system", {
        "WTG-{n} hydraulic pressure low {v} bar",
        "Rotor brake hydraulic pressure dropping on WTG {n}",
        "[MAJOR] WTG{n} HYD PRESS LO" } },
    { "ups_on_battery", "datacentre", 3, "a UPS running on battery after mains loss", {
        "UPS-{n} on battery, {v}% remaining",
        "Mains failure: UPS {n} switched to battery",
        "[CRITICAL] UPS{n} ON BATT RUNTIME {v}MIN" } },
    { "ups_battery_eol", "datacentre", 1, "UPS batteries at the end of their life", {
        "UPS-{n} battery replacement due",
        "UPS {n} self-test: battery string {r} end of life",
        "[MINOR] UPS{n} BATT EOL STRING {r}" } },
    { "crac_failure", "datacentre", 3, "a failed computer-room air conditioner", {
        "CRAC-{n} compressor failure",
        "Cooling unit CRAC {n} stopped, row {r} warming",
        "[CRITICAL] CRAC{n} COMP FAIL",
        "{n}号精密空调压缩机故障" } },
    { "chiller_trip", "datacentre", 4, "a chiller plant trip", {
        "Chiller-{n} tripped on low flow",
        "Chilled water plant: chiller {n} trip, supply temp {v}C",
        "[EMERGENCY] CHLR{n} TRIP",
        "{n}号冷水机组跳闸" } },
    { "rack_inlet_temp", "datacentre", 2, "a hot rack inlet in a data hall", {
        "Rack {r}-{n} inlet temperature {v}C",
        "Hot spot: inlet of rack {r}{n} at {v} °C",
        "[MAJOR] RACK {r}{n} INLET TEMP {v}C" } },
    { "pdu_overload", "datacentre", 2, "an overloaded rack power distribution unit", {
        "PDU-{r}{n} load {v}% of rating",
        "Rack PDU {r}-{n} phase overload",
        "[MAJOR] PDU {r}{n} OVERLOAD" } },
    { "breaker_trip", "datacentre", 4, "a tripped breaker in power distribution", {
        "Breaker {r}{n} tripped on busbar B",
        "Feeder breaker trip in switchroom {r}, circuit {n}",
        "[EMERGENCY] BRKR {r}{n} TRIP",
        "{r}{n}配电断路器跳闸" } },
    { "genset_fuel_low", "datacentre", 2, "low fuel on a standby generator", {
        "Genset-{n} fuel level {v}%",
        "Standby generator {n} day tank low",
        "[MAJOR] GEN{n} FUEL LO {v}PCT" } },
    { "bgp_down", "datacentre", 3, "a BGP session to a carrier down", {
        "BGP session to AS{n}{n} down on edge router {r}",
        "Edge router {r}: BGP neighbour {n} state Idle",
        "[CRITICAL] RTR{r} BGP PEER {n} DOWN" } },
    { "link_flap", "datacentre", 1, "a flapping network link", {
        "Core switch {r} port {n} link flapping",
        "Link up/down x{v} on switch {r} interface {n}",
        "[MINOR] SW{r} IF{n} FLAP",
        "{r}号交换机端口{n}链路抖动" } },
    { "fibre_crc", "datacentre", 1, "CRC errors on a fibre link", {
        "Switch {r} port {n} CRC errors {v}/min",
        "Rising CRC error count on uplink {n} of switch {r}",
        "[MINOR] SW{r} IF{n} CRC {v}" } },
    { "storage_degraded", "datacentre", 2, "a storage array running degraded", {
        "Storage array {r}{n} degraded, disk {v} failed",
        "SAN {r}-{n}: RAID group rebuilding",
        "[MAJOR] SAN{r}{n} DEGRADED" } },
    { "fire_preaction", "datacentre", 4, "a fire detection pre-action alarm", {
        "Fire pre-action alarm data hall {r}",
        "VESDA alert level {v} in hall {r}",
        "[EMERGENCY] FIRE PREACTION HALL {r}",
        "{r}号机房火灾预警" } },
    { "water_leak", "datacentre", 3, "water detected under a raised floor", {
        "Water leak detected under floor tile {r}{n}",
        "Leak detection cable alarm, row {r}",
        "[CRITICAL] LEAK ROW {r} ZONE {n}" } },
    { "door_forced", "datacentre", 1, "a data hall door forced or held open", {
        "Door {r}{n} forced open",
        "Access control: door {r}-{n} held open {v} s",
        "[MINOR] DOOR {r}{n} FORCED" } },
    { "dc_power_redundancy", "datacentre", 2, "loss of power redundancy on a rack", {
        "Rack {r}{n} lost A-feed, running on B only",
        "Power redundancy lost on rack {r}-{n}",
        "[MAJOR] RACK {r}{n} FEED A LOST" } },
}

local severity_names = { [0] = "info", "minor", "major", "critical", "emergency" }

local function pick(list)
    return list[math.random(#list)]
end

-- One alarm text of kind, with attrs (site, source, severity, code) as monitoring sends them.
function M.say(kind)
    local text = pick(kind[5]):gsub("{(%a)}", function(slot)
        if slot == "n" then return tostring(math.random(1, 60)) end
        if slot == "r" then return pick({ "A", "B", "C", "D", "E" }) end
        return tostring(math.random(20, 120))
    end)
    local wind = kind[2] == "wind"
    local attrs = {
        site = wind and pick(wind_sites) or pick(dc_sites),
        source = wind and "scada" or pick({ "dcim", "bms", "netmon" }),
        severity = severity_names[kind[3]],
        code = kind[1], -- the alarm code, as SCADA and DCIM systems send it
    }
    return text, attrs
end

function M.name(kind) return kind[1] end
function M.domain(kind) return kind[2] end
function M.about(kind) return kind[4] end

return M
