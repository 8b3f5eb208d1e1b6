/*
 * A sandboxed Lua 5.4 state for operators' scripts, which are trusted to be wrong, not
 * malicious, and defended against both.
 *
 * What a script gets: the base functions without dofile, loadfile and collectgarbage;
 * `load` of text chunks only; the string (without dump), table, math, utf8 and coroutine
 * libraries behind read-only proxies; `require` that reaches only the pack's directory
 * and the helper library; `print` into promptd's log. No os, io, package or debug.
 *
 * Limits, per call: an instruction budget and a wall-clock deadline (a count hook that
 * stays armed, firing on every line, once the budget is spent, so pcall cannot swallow
 * it); a call-depth limit; string patterns run by a matcher with its own step budget
 * (luapat.h), since C functions never fire the hook; string.rep refused past a size; and
 * a memory cap for the whole state (a custom allocator). Metatables with __gc are refused,
 * and the limits stay on while a state closes.
 *
 * One sandbox is used by one thread at a time.
 */
#ifndef PD_SANDBOX_H
#define PD_SANDBOX_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t memory;         /* bytes the whole state may hold */
    uint64_t instructions; /* VM instructions per call */
    uint64_t time_ms;      /* wall-clock milliseconds per call */
    int max_depth;         /* Lua call depth */
    size_t max_string;     /* largest string string.rep may build */
    long fail_after;       /* tests only: allocations that succeed before all fail; 0: off */
} SandboxLimits;

typedef struct Sandbox Sandbox;

/* Creates a sandbox whose `require` searches pack_dir, then lib_dir. name labels its log
 * lines (the pack's name). Returns NULL with err filled when out of memory. */
Sandbox *sandbox_new(const char *name, const char *pack_dir, const char *lib_dir,
                     const SandboxLimits *limits, char *err, size_t errlen);

/* Closes the state with the limits still on, so that a finalizer cannot hang it. */
void sandbox_free(Sandbox *sb);

lua_State *sandbox_state(Sandbox *sb);

/* Loads and runs a file of the pack (relative to pack_dir) with `require`'s rules, leaving
 * its first result on the stack. Returns 0, or -1 with "file:line: message" in err. */
int sandbox_run_file(Sandbox *sb, const char *relpath, char *err, size_t errlen);

/* Calls the function at stack index -(nargs + 1) with nargs arguments under fresh limits,
 * leaving nresults results (LUA_MULTRET not allowed). scale multiplies the instruction and
 * time budget (loading and self-tests get more than a render). Returns 0, or -1 with the
 * error and a compact traceback in err and nothing left on the stack. */
int sandbox_call(Sandbox *sb, int nargs, int nresults, unsigned scale, char *err, size_t errlen);

/* XXH64 over the names and contents of every file read so far (the pack's entry script
 * and whatever it required), in reading order: the pack's version. */
uint64_t sandbox_files_hash(const Sandbox *sb);

/* Memory the state holds now, in bytes. */
size_t sandbox_memory(const Sandbox *sb);

/* For tests: make the allocation after the next n succeed no more (-1: never fail). */
void sandbox_fail_after(Sandbox *sb, long n);

#endif
