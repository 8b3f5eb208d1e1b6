/*
 * Budgeted Lua 5.4 string patterns for the script sandbox.
 *
 * Lua's own string.find, match, gmatch and gsub are C functions: the instruction-count hook
 * never fires inside them, and a backtracking pattern such as ".-.-.-b" on a few kilobytes
 * runs for minutes. luapat_install() replaces the four functions with a matcher of the same
 * observable behaviour (results and error messages of Lua 5.4.4) that counts its steps and
 * calls back into the host every LUAPAT_CHECK_EVERY steps, so that the host can stop it by
 * raising a Lua error. A hard cap of LUAPAT_MAX_STEPS per call stops it even when the host
 * never does.
 *
 * One step is one attempt to match one pattern item at one subject position (the repeats of
 * a quantifier and the retries of backtracking each count). Work that grows with an input
 * is charged a step per 16 bytes on top: long sets, back-references, %b scans, gsub
 * replacement strings and plain finds, so that the time per step stays bounded.
 *
 * The functions keep their state in upvalues and in the registry of their lua_State, so any
 * number of states may use them in any threads (one thread per state at a time, as Lua
 * itself requires). No C memory is allocated: a Lua error may unwind any of them at any point.
 */
#ifndef PD_LUAPAT_H
#define PD_LUAPAT_H

#include <stdint.h>

#include <lua.h>

/* Steps between two calls of the host's check. */
#define LUAPAT_CHECK_EVERY 4096

/* Steps one call (one string.* call, or one step of a gmatch iterator) may take at most;
 * past it the call raises LUAPAT_BUDGET_MSG. A multiple of LUAPAT_CHECK_EVERY. */
#define LUAPAT_MAX_STEPS (12208 * LUAPAT_CHECK_EVERY) /* about 50 million */

#define LUAPAT_BUDGET_MSG "pattern too complex (step budget exhausted)"

/* Called about every LUAPAT_CHECK_EVERY matching steps with the host's context; it may
 * raise a Lua error to stop the match (the matcher holds no C resources then). It must
 * leave the Lua stack as it found it. */
typedef void (*LuapatCheck)(lua_State *L, void *ctx);

/* Sets find, match, gmatch and gsub in the table at index idx (normally the string library
 * table) to the budgeted versions. check may be NULL; ctx is passed to it unchanged and
 * must outlive the functions. Raises a Lua memory error if the state's allocator refuses
 * (call it while setting the state up, or under lua_pcall). Stack: unchanged. */
void luapat_install(lua_State *L, int idx, LuapatCheck check, void *ctx);

/* Steps counted in this state (and its coroutines) since luapat_install first ran in it;
 * 0 if it never did. For tests and metrics. */
uint64_t luapat_steps(lua_State *L);

#endif
