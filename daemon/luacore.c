/* promptd.core: JSON, hashing and logging for policy packs. See luacore.h. */
#include "luacore.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "log.h"

#define JSON_DEPTH_MAX 64 /* deeper Lua tables are refused (and cycles caught) */

/* The value that stands for JSON null: its address is unique. */
static const char json_null_tag = 0;
#define JSON_NULL ((void *)&json_null_tag)

/* --- JSON to Lua --- */

void luacore_push_json(lua_State *L, const json_t *v) {
    luaL_checkstack(L, 3, "JSON nested too deeply");
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *item;
        lua_createtable(L, 0, (int)json_object_size(v));
        json_object_foreach((json_t *)v, key, item) {
            luacore_push_json(L, item);
            lua_setfield(L, -2, key);
        }
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *item;
        lua_createtable(L, (int)json_array_size(v), 0);
        json_array_foreach(v, i, item) {
            luacore_push_json(L, item);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    }
    case JSON_STRING: lua_pushlstring(L, json_string_value(v), json_string_length(v)); break;
    case JSON_INTEGER: lua_pushinteger(L, json_integer_value(v)); break;
    case JSON_REAL: lua_pushnumber(L, json_real_value(v)); break;
    case JSON_TRUE: lua_pushboolean(L, 1); break;
    case JSON_FALSE: lua_pushboolean(L, 0); break;
    default: lua_pushlightuserdata(L, JSON_NULL); break;
    }
}

/* --- Lua to JSON --- */

static json_t *to_json(lua_State *L, int idx, int depth, char *err, size_t errlen);

/* The length n of a table whose keys are exactly 1..n (n >= 1), or 0. */
static lua_Integer sequence_length(lua_State *L, int idx) {
    lua_Integer n = 0, max = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
            lua_pop(L, 1);
            return 0;
        }
        lua_Integer k = lua_tointeger(L, -1);
        if (k > max) max = k;
        n++;
    }
    return n == max ? n : 0;
}

static json_t *table_to_json(lua_State *L, int idx, int depth, char *err, size_t errlen) {
    lua_Integer n = sequence_length(L, idx);
    json_t *out = n ? json_array() : json_object();

    for (lua_Integer i = 1; out && i <= n; i++) {
        lua_rawgeti(L, idx, i);
        json_t *item = to_json(L, lua_gettop(L), depth + 1, err, errlen);
        lua_pop(L, 1);
        if (!item || json_array_append_new(out, item)) goto fail;
    }
    if (n) return out;

    lua_pushnil(L);
    while (out && lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            snprintf(err, errlen, "cannot encode a table with a %s key as JSON",
                     luaL_typename(L, -2));
            lua_pop(L, 2);
            goto fail;
        }
        json_t *item = to_json(L, lua_gettop(L), depth + 1, err, errlen);
        if (!item || json_object_setn_new(out, lua_tostring(L, -2), lua_rawlen(L, -2), item)) {
            lua_pop(L, 2);
            goto fail;
        }
        lua_pop(L, 1);
    }
    return out;

fail:
    json_decref(out);
    if (!err[0]) snprintf(err, errlen, "cannot encode value as JSON (out of memory?)");
    return NULL;
}

static json_t *number_to_json(lua_State *L, int idx, char *err, size_t errlen) {
    if (lua_isinteger(L, idx)) return json_integer(lua_tointeger(L, idx));
    double d = lua_tonumber(L, idx);
    if (!isfinite(d)) {
        snprintf(err, errlen, "cannot encode %s as JSON", isnan(d) ? "NaN" : "infinity");
        return NULL;
    }
    return json_real(d);
}

static json_t *to_json(lua_State *L, int idx, int depth, char *err, size_t errlen) {
    if (depth > JSON_DEPTH_MAX) {
        snprintf(err, errlen, "cannot encode as JSON: nested deeper than %d (a cycle?)",
                 JSON_DEPTH_MAX);
        return NULL;
    }
    if (!lua_checkstack(L, 4)) {
        snprintf(err, errlen, "cannot encode as JSON: out of stack");
        return NULL;
    }
    switch (lua_type(L, idx)) {
    case LUA_TNIL: return json_null();
    case LUA_TBOOLEAN: return json_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER: return number_to_json(L, idx, err, errlen);
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        json_t *v = json_stringn(s, len);
        if (!v) snprintf(err, errlen, "cannot encode a string that is not UTF-8 as JSON");
        return v;
    }
    case LUA_TTABLE: return table_to_json(L, idx, depth, err, errlen);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == JSON_NULL) return json_null();
        /* fall through */
    default:
        snprintf(err, errlen, "cannot encode a %s as JSON", luaL_typename(L, idx));
        return NULL;
    }
}

json_t *luacore_to_json(lua_State *L, int idx, char *err, size_t errlen) {
    err[0] = 0;
    return to_json(L, lua_absindex(L, idx), 0, err, errlen);
}

/* --- the module's functions --- */

/* json_encode(value) -> string, with object keys sorted so that equal tables encode
 * equally (a pack may hash or compare what it encodes) */
static int core_json_encode(lua_State *L) {
    char err[256];
    luaL_checkany(L, 1);
    json_t *v = luacore_to_json(L, 1, err, sizeof err);
    if (!v) return luaL_error(L, "%s", err);

    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
    json_decref(v);
    if (!text) return luaL_error(L, "cannot encode as JSON (out of memory)");
    lua_pushstring(L, text);
    free(text);
    return 1;
}

/* json_decode(string) -> value, or nil and a message */
static int core_json_decode(lua_State *L) {
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    json_error_t jerr;
    json_t *v = json_loadb(text, len, JSON_DECODE_ANY, &jerr);
    if (!v) {
        luaL_pushfail(L);
        lua_pushfstring(L, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column,
                        jerr.text);
        return 2;
    }
    luacore_push_json(L, v);
    json_decref(v);
    return 1;
}

/* hash(string [, seed]) -> 16 hex digits of XXH64, the same on every machine */
static int core_hash(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Integer seed = luaL_optinteger(L, 2, 0);
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)XXH64(s, len, (XXH64_hash_t)seed));
    lua_pushstring(L, hex);
    return 1;
}

/* bucket(string, n) -> 1..n, stable for a string: for A/B splits and sampling */
static int core_bucket(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 1, 2, "must be at least 1");
    lua_pushinteger(L, (lua_Integer)(XXH64(s, len, 0) % (unsigned long long)n) + 1);
    return 1;
}

/* escape_text(s): control characters become spaces and "${" becomes "$ {", so that a
 * value stays on one line and cannot pose as template syntax. In C because it runs for
 * every interpolated value, and a Lua pattern scan cost more than the rest of a render. */
static int core_escape_text(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    size_t i = 0;
    while (i < len && (unsigned char)s[i] >= 0x20 && s[i] != 0x7F &&
           !(s[i] == '$' && i + 1 < len && s[i + 1] == '{'))
        i++;
    if (i == len) {
        lua_settop(L, 1);
        return 1;
    }

    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, len + len / 2 + 1);
    size_t n = 0;
    for (size_t k = 0; k < len; k++) {
        unsigned char c = (unsigned char)s[k];
        out[n++] = c < 0x20 || c == 0x7F ? ' ' : (char)c;
        if (c == '$' && k + 1 < len && s[k + 1] == '{') out[n++] = ' ';
    }
    luaL_pushresultsize(&b, n);
    return 1;
}

/* truncate(s, max [, ellipsis]): at most max bytes, never splitting a UTF-8 character;
 * the ellipsis, counted within max, is appended only when s was cut. */
static int core_truncate(lua_State *L) {
    size_t len, elen = 0;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Integer max = luaL_checkinteger(L, 2);
    const char *ellipsis = luaL_optlstring(L, 3, "", &elen);
    luaL_argcheck(L, max >= 0, 2, "must not be negative");
    if (len <= (size_t)max) {
        lua_settop(L, 1);
        return 1;
    }
    if ((size_t)max <= elen) {
        lua_pushlstring(L, ellipsis, (size_t)max);
        return 1;
    }
    size_t cut = (size_t)max - elen;
    while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80) cut--;
    lua_pushlstring(L, s, cut);
    lua_pushlstring(L, ellipsis, elen);
    lua_concat(L, 2);
    return 1;
}

/* log(level, pack, message): level is "error", "warn", "info" or "debug" */
static int core_log(lua_State *L) {
    static const char *const names[] = {"error", "warn", "info", "debug", NULL};
    static const int levels[] = {PD_LOG_ERR, PD_LOG_WARNING, PD_LOG_INFO, PD_LOG_DEBUG};
    int level = levels[luaL_checkoption(L, 1, NULL, names)];
    const char *pack = luaL_checkstring(L, 2);
    const char *msg = luaL_checkstring(L, 3);
    pd_log(level, PD_MOD_LUA, "pack %s: %s", pack, msg);
    return 0;
}

int luacore_open(lua_State *L) {
    static const luaL_Reg funcs[] = {{"json_encode", core_json_encode},
                                     {"json_decode", core_json_decode},
                                     {"hash", core_hash},
                                     {"bucket", core_bucket},
                                     {"log", core_log},
                                     {"escape_text", core_escape_text},
                                     {"truncate", core_truncate},
                                     {NULL, NULL}};
    luaL_newlib(L, funcs);
    lua_pushlightuserdata(L, JSON_NULL);
    lua_setfield(L, -2, "null");
    return 1;
}
