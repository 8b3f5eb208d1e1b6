/*
 * The C half of the policy packs' helper library, `require "promptd.core"`: JSON encoding
 * and decoding (jansson), a deterministic hash (XXH64) and logging through promptd's
 * logger. lua/promptd.lua builds the friendly API on top of it.
 *
 * Also the conversion between jansson values and Lua values that the pack host uses for
 * messages, attributes and reward events.
 */
#ifndef PD_LUACORE_H
#define PD_LUACORE_H

#include <jansson.h>
#include <lua.h>
#include <stddef.h>

/* lua_CFunction opening the module: returns its table. */
int luacore_open(lua_State *L);

/* Pushes v as a Lua value: objects and arrays become tables, null becomes core.null (so
 * that a key with a null value still exists). Raises a Lua error when the stack cannot
 * grow (very deep nesting). */
void luacore_push_json(lua_State *L, const json_t *v);

/* Converts the Lua value at idx. Tables with keys 1..n are arrays, others objects with
 * string keys; the empty table is an object. Returns a new reference, or NULL with err
 * filled: a function, a cycle or too deep nesting, a NaN or infinity, a non-string key,
 * a string that is not UTF-8. Does not raise. */
json_t *luacore_to_json(lua_State *L, int idx, char *err, size_t errlen);

#endif
