/*
 * The sandbox: a capped allocator, a budget hook, a whitelisted set of libraries behind
 * read-only proxies, and a `require` confined to two directories. See sandbox.h.
 */
#include "sandbox.h"

#include <errno.h>
#include <limits.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "log.h"
#include "luacore.h"
#include "luapat.h"
#include "pd.h"

#define HOOK_EVERY            1000 /* instructions between two budget checks */
#define STEPS_PER_INSTRUCTION 4    /* pattern-matching steps that count as one instruction */
#define MODULE_MAX            (1024 * 1024) /* bytes of one Lua source file */

#define REG_LOADED   "promptd.loaded"   /* registry: modules loaded by require */
#define REG_READONLY "promptd.readonly" /* registry: metatable of read-only proxies */

typedef enum { SPENT_NOTHING, SPENT_INSTRUCTIONS, SPENT_TIME } Spent;

struct Sandbox {
    lua_State *L;
    SandboxLimits limits;
    char name[64];
    char *pack_dir, *lib_dir;

    size_t mem_used;
    long fail_after; /* allocations left before failing, or -1 */

    /* The budget of the call in progress. */
    uint64_t used;        /* instructions, plus pattern steps scaled down */
    uint64_t budget;      /* instructions this call may use */
    uint64_t deadline_ns; /* monotonic */
    uint64_t time_ms;     /* of this call, for the message */
    Spent spent;          /* why the budget is gone; sticky until the call ends */

    XXH64_state_t *files; /* hash of the files read, for the pack's version */
};

static Sandbox *sandbox_of(lua_State *L) {
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

/* --- memory --- */

/* Every allocation of the state goes through here; growing past the cap fails, which Lua
 * turns into a "not enough memory" error that unwinds the call. Shrinking never fails. */
static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    Sandbox *sb = ud;
    size_t old = ptr ? osize : 0;

    if (nsize == 0) {
        free(ptr);
        sb->mem_used -= old;
        return NULL;
    }
    if (nsize > old) {
        if (sb->fail_after == 0 || nsize - old > sb->limits.memory - sb->mem_used) return NULL;
        if (sb->fail_after > 0) sb->fail_after--;
    }
    void *p = realloc(ptr, nsize);
    if (p) sb->mem_used = sb->mem_used - old + nsize;
    return p;
}

size_t sandbox_memory(const Sandbox *sb) {
    return sb->mem_used;
}

void sandbox_fail_after(Sandbox *sb, long n) {
    sb->fail_after = n;
}

/* --- budget --- */

static void budget_hook(lua_State *L, lua_Debug *ar);

/* Raises the error that ends the call. Once the budget is spent the hook fires on every
 * line of every thread and raises again, so a script that catches the error with pcall,
 * or runs on in a coroutine, gets nowhere. */
static void out_of_budget(lua_State *L, Sandbox *sb, Spent why) {
    char msg[96];
    sb->spent = why;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT | LUA_MASKLINE, 1);
    if (why == SPENT_INSTRUCTIONS)
        snprintf(msg, sizeof msg, "instruction budget exceeded (%llu instructions)",
                 (unsigned long long)sb->budget);
    else
        snprintf(msg, sizeof msg, "time limit exceeded (%llu ms)", (unsigned long long)sb->time_ms);
    luaL_error(L, "%s", msg);
}

static void check_budget(lua_State *L, Sandbox *sb) {
    if (sb->spent != SPENT_NOTHING) out_of_budget(L, sb, sb->spent);
    if (sb->used > sb->budget) out_of_budget(L, sb, SPENT_INSTRUCTIONS);
    if (pd_mono_ns() > sb->deadline_ns) out_of_budget(L, sb, SPENT_TIME);
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
    Sandbox *sb = sandbox_of(L);
    lua_Debug caller;
    (void)ar;

    sb->used += HOOK_EVERY;
    check_budget(L, sb);

    /* Deep recursion: Lua's own limit is a million stack slots, far past what a template
     * needs, so the depth is bounded here (cheaply, once per HOOK_EVERY instructions). */
    if (sb->limits.max_depth > 0 && lua_getstack(L, sb->limits.max_depth, &caller))
        luaL_error(L, "call depth exceeds %d", sb->limits.max_depth);
}

/* The pattern matcher's check: its steps count against the same budget. */
static void pattern_check(lua_State *L, void *ctx) {
    Sandbox *sb = ctx;
    sb->used += LUAPAT_CHECK_EVERY / STEPS_PER_INSTRUCTION;
    check_budget(L, sb);
}

static void arm(Sandbox *sb, unsigned scale) {
    sb->spent = SPENT_NOTHING;
    sb->used = 0;
    sb->budget = sb->limits.instructions * scale;
    sb->time_ms = sb->limits.time_ms * scale;
    sb->deadline_ns = pd_mono_ns() + sb->time_ms * 1000000u;
    lua_sethook(sb->L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
}

/* --- what scripts may call --- */

static int readonly_newindex(lua_State *L) {
    return luaL_error(L, "attempt to modify read-only table %s",
                      lua_tostring(L, lua_upvalueindex(1)));
}

static int readonly_next(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_next(L, 1)) return 2;
    lua_pushnil(L);
    return 1;
}

/* pairs() over a proxy walks the library it stands for. */
static int readonly_pairs(lua_State *L) {
    lua_pushcfunction(L, readonly_next);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushnil(L);
    return 3;
}

/* Replaces the library table at the top of the stack by a read-only proxy of it. */
static void make_readonly(lua_State *L, const char *libname) {
    lua_newtable(L); /* proxy */
    lua_newtable(L); /* its metatable */
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "__index");
    lua_pushstring(L, libname);
    lua_pushcclosure(L, readonly_newindex, 1);
    lua_setfield(L, -2, "__newindex");
    lua_pushvalue(L, -3);
    lua_pushcclosure(L, readonly_pairs, 1);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, REG_READONLY);
    lua_setmetatable(L, -2);
    lua_remove(L, -2); /* the library itself stays reachable only through the proxy */
}

static bool is_readonly(lua_State *L, int idx) {
    if (!lua_getmetatable(L, idx)) return false;
    bool ro = lua_getfield(L, -1, REG_READONLY) == LUA_TBOOLEAN;
    lua_pop(L, 2);
    return ro;
}

static int safe_rawset(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    if (is_readonly(L, 1)) return luaL_error(L, "attempt to modify a read-only library table");
    luaL_checkany(L, 2);
    luaL_checkany(L, 3);
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 1;
}

/* Finalizers run when the state closes, outside any call's budget; refusing them keeps a
 * reload from hanging on a script's __gc. */
static int safe_setmetatable(lua_State *L) {
    int t = lua_type(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    if (t == LUA_TTABLE && lua_getfield(L, 2, "__gc") != LUA_TNIL)
        return luaL_error(L, "__gc metamethods are not allowed in policy packs");
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

/* load(chunk [, chunkname [, mode [, env]]]), text chunks only: Lua does not verify
 * binary chunks, and a crafted one can crash the interpreter. */
static int safe_load(lua_State *L) {
    size_t len;
    const char *chunk = luaL_checklstring(L, 1, &len);
    const char *name = luaL_optstring(L, 2, "=(load)");
    int has_env = !lua_isnone(L, 4);

    if (luaL_loadbufferx(L, chunk, len, name, "t") != LUA_OK) {
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    if (has_env) {
        lua_pushvalue(L, 4);
        if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
    }
    return 1;
}

/* print(...) goes to promptd's log, tagged with the pack. */
static int sandbox_print(lua_State *L) {
    Sandbox *sb = sandbox_of(L);
    luaL_Buffer b;
    int n = lua_gettop(L);
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
        if (i < n) luaL_addchar(&b, '\t');
    }
    luaL_pushresult(&b);
    pd_log(PD_LOG_INFO, PD_MOD_LUA, "pack %s: %s", sb->name, lua_tostring(L, -1));
    return 0;
}

static int capped_rep(lua_State *L) {
    Sandbox *sb = sandbox_of(L);
    size_t len, seplen = 0;
    luaL_checklstring(L, 1, &len);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &seplen);

    if (n > 0 && (len + seplen) > 0 && (uint64_t)n > sb->limits.max_string / (len + seplen) + 1)
        return luaL_error(L, "string.rep would build more than %I bytes (lua.max_string)",
                          (lua_Integer)sb->limits.max_string);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

/* --- require --- */

static bool module_name_ok(const char *name) {
    size_t len = strlen(name);
    if (len == 0 || len > 128 || name[0] == '.' || strstr(name, "..")) return false;
    for (const char *p = name; *p; p++)
        if (!(*p == '.' || *p == '_' || *p == '-' || (*p >= 'a' && *p <= 'z') ||
              (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')))
            return false;
    return true;
}

/* Hashes a file's label and contents as they were read, so the version always matches
 * the code that runs, even if the file changes on disk meanwhile. */
static void note_file(Sandbox *sb, const char *label, const char *bytes, size_t len) {
    uint64_t n = len;
    XXH64_update(sb->files, label, strlen(label) + 1);
    XXH64_update(sb->files, &n, sizeof n);
    XXH64_update(sb->files, bytes, len);
}

uint64_t sandbox_files_hash(const Sandbox *sb) {
    return XXH64_digest(sb->files);
}

/* Reads path into a Lua userdata (so that the memory counts against the cap and is freed
 * by the collector if a later step raises). Returns 0, 1 when absent, -1 on error. */
static int read_source(lua_State *L, const char *path, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) return 1;
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode) || st.st_size > MODULE_MAX) {
        snprintf(err, errlen, "%s is not a regular file of at most %d bytes", path, MODULE_MAX);
        fclose(f);
        return -1;
    }
    char *buf = lua_newuserdatauv(L, (size_t)st.st_size + 1, 0);
    *len = fread(buf, 1, (size_t)st.st_size, f);
    bool bad = ferror(f) != 0;
    fclose(f);
    if (bad) {
        lua_pop(L, 1);
        snprintf(err, errlen, "cannot read %s", path);
        return -1;
    }
    return 0;
}

/* Loads dir/rel as a text chunk named "=label/rel". Returns 0 with the chunk on the stack,
 * 1 when the file is absent, -1 with err filled. */
static int load_source(Sandbox *sb, const char *dir, const char *label, const char *rel, char *err,
                       size_t errlen) {
    lua_State *L = sb->L;
    char path[4096], chunkname[512];
    size_t len;
    snprintf(path, sizeof path, "%s/%s", dir, rel);

    int rc = read_source(L, path, &len, err, errlen);
    if (rc) return rc;
    snprintf(chunkname, sizeof chunkname, "=%s/%s", label, rel);
    const char *bytes = lua_touserdata(L, -1);
    if (luaL_loadbufferx(L, bytes, len, chunkname, "t") != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        lua_pop(L, 2);
        return -1;
    }
    note_file(sb, chunkname + 1, bytes, len);
    lua_remove(L, -2); /* the source buffer */
    return 0;
}

static const char *dir_label(const char *dir) {
    const char *slash = strrchr(dir, '/');
    return slash && slash[1] ? slash + 1 : dir;
}

/* Finds name in the pack's directory, then in the helper library. */
static int find_module(Sandbox *sb, const char *name, char *err, size_t errlen) {
    char rel[300];
    const char *dirs[] = {sb->pack_dir, sb->lib_dir};
    const char *forms[] = {"%s.lua", "%s/init.lua"};
    char path[260];
    snprintf(path, sizeof path, "%s", name);
    for (char *p = path; *p; p++)
        if (*p == '.') *p = '/';

    for (size_t d = 0; d < PD_ARRAY_LEN(dirs); d++) {
        if (!dirs[d]) continue;
        for (size_t f = 0; f < PD_ARRAY_LEN(forms); f++) {
            snprintf(rel, sizeof rel, forms[f], path);
            int rc = load_source(sb, dirs[d], dir_label(dirs[d]), rel, err, errlen);
            if (rc <= 0) return rc;
        }
    }
    snprintf(err, errlen, "module '%s' not found in the pack or the helper library", name);
    return -1;
}

static int sandbox_require(lua_State *L) {
    Sandbox *sb = sandbox_of(L);
    char err[PATH_MAX + 512];
    const char *name = luaL_checkstring(L, 1);
    if (!module_name_ok(name)) return luaL_error(L, "invalid module name '%s'", name);

    lua_getfield(L, LUA_REGISTRYINDEX, REG_LOADED);
    if (lua_getfield(L, -1, name) != LUA_TNIL) return 1;
    lua_pop(L, 1);

    if (!strcmp(name, "promptd.core")) {
        lua_pushcfunction(L, luacore_open);
    } else if (find_module(sb, name, err, sizeof err)) {
        return luaL_error(L, "%s", err);
    }
    lua_pushstring(L, name);
    lua_call(L, 1, 1);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, name);
    return 1;
}

/* --- building the state --- */

static void open_lib(lua_State *L, const char *name, lua_CFunction open) {
    luaL_requiref(L, name, open, 0);
}

static void setup_string(Sandbox *sb) {
    lua_State *L = sb->L;
    open_lib(L, LUA_STRLIBNAME, luaopen_string);
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_getfield(L, -1, "rep");
    lua_pushcclosure(L, capped_rep, 1);
    lua_setfield(L, -2, "rep");
    luapat_install(L, lua_gettop(L), pattern_check, sb);

    /* The string metatable is shared by every string of the state: hide it, so that
     * getmetatable("").__index cannot be reached and altered. */
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);

    make_readonly(L, LUA_STRLIBNAME);
    lua_setglobal(L, LUA_STRLIBNAME);
}

static void setup_libs(Sandbox *sb) {
    static const struct {
        const char *name;
        lua_CFunction open;
    } libs[] = {{LUA_TABLIBNAME, luaopen_table},
                {LUA_MATHLIBNAME, luaopen_math},
                {LUA_UTF8LIBNAME, luaopen_utf8},
                {LUA_COLIBNAME, luaopen_coroutine}};
    lua_State *L = sb->L;

    for (size_t i = 0; i < PD_ARRAY_LEN(libs); i++) {
        open_lib(L, libs[i].name, libs[i].open);
        make_readonly(L, libs[i].name);
        lua_setglobal(L, libs[i].name);
    }
    setup_string(sb);
}

static void setup_base(Sandbox *sb) {
    static const char *const removed[] = {"dofile", "loadfile", "collectgarbage", "warn"};
    static const luaL_Reg replaced[] = {
        {"load", safe_load},          {"print", sandbox_print},
        {"rawset", safe_rawset},      {"setmetatable", safe_setmetatable},
        {"require", sandbox_require}, {NULL, NULL}};
    lua_State *L = sb->L;

    open_lib(L, LUA_GNAME, luaopen_base);
    lua_pop(L, 1);
    for (size_t i = 0; i < PD_ARRAY_LEN(removed); i++) {
        lua_pushnil(L);
        lua_setglobal(L, removed[i]);
    }
    lua_pushglobaltable(L);
    luaL_setfuncs(L, replaced, 0);
    lua_pop(L, 1);

    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_LOADED);
}

static int setup(lua_State *L) {
    Sandbox *sb = lua_touserdata(L, 1);
    setup_base(sb);
    setup_libs(sb);
    return 0;
}

Sandbox *sandbox_new(const char *name, const char *pack_dir, const char *lib_dir,
                     const SandboxLimits *limits, char *err, size_t errlen) {
    Sandbox *sb = calloc(1, sizeof *sb);
    if (!sb) goto oom;
    sb->limits = *limits;
    sb->fail_after = limits->fail_after > 0 ? limits->fail_after : -1;
    snprintf(sb->name, sizeof sb->name, "%s", name);
    sb->pack_dir = pack_dir ? strdup(pack_dir) : NULL;
    sb->lib_dir = lib_dir ? strdup(lib_dir) : NULL;
    sb->files = XXH64_createState();
    if ((pack_dir && !sb->pack_dir) || (lib_dir && !sb->lib_dir) || !sb->files) goto oom;
    XXH64_reset(sb->files, 0);

    sb->L = lua_newstate(capped_alloc, sb);
    if (!sb->L) goto oom;
    arm(sb, 10);
    lua_pushcfunction(sb->L, setup);
    lua_pushlightuserdata(sb->L, sb);
    if (lua_pcall(sb->L, 1, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot set up the Lua sandbox: %s", lua_tostring(sb->L, -1));
        sandbox_free(sb);
        return NULL;
    }
    return sb;

oom:
    snprintf(err, errlen, "out of memory creating the Lua sandbox");
    sandbox_free(sb);
    return NULL;
}

void sandbox_free(Sandbox *sb) {
    if (!sb) return;
    if (sb->L) {
        arm(sb, 1);
        lua_close(sb->L);
    }
    free(sb->pack_dir);
    free(sb->lib_dir);
    XXH64_freeState(sb->files);
    free(sb);
}

lua_State *sandbox_state(Sandbox *sb) {
    return sb->L;
}

/* --- calling --- */

/* Message handler: the error text plus a short traceback, on one line. */
static int traceback(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Copies a traceback into err as "message [at a:1 < b:2 < ...]", dropping the frames
 * of C functions, which name no line an operator could open. */
static void compact_error(const char *tb, char *err, size_t errlen) {
    const char *nl = strstr(tb, "\nstack traceback:");
    size_t msglen = nl ? (size_t)(nl - tb) : strlen(tb);
    size_t n = (size_t)snprintf(err, errlen, "%.*s", (int)msglen, tb);
    int frames = 0;

    for (const char *p = nl ? strstr(nl + 1, "\n\t") : NULL; p && n < errlen && frames < 4;
         p = strstr(p + 2, "\n\t")) {
        const char *end = strpbrk(p + 2, ":\n");
        const char *line = end && *end == ':' ? end + 1 : NULL;
        if (!line || !(*line >= '0' && *line <= '9')) continue;
        size_t len = strcspn(p + 2, ": \n");
        size_t linelen = strspn(line, "0123456789");
        n += (size_t)snprintf(err + n, errlen - n, "%s%.*s:%.*s", frames ? " < " : " [at ",
                              (int)len, p + 2, (int)linelen, line);
        frames++;
    }
    if (frames && n < errlen) snprintf(err + n, errlen - n, "]");
}

int sandbox_call(Sandbox *sb, int nargs, int nresults, unsigned scale, char *err, size_t errlen) {
    lua_State *L = sb->L;
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, traceback);
    lua_insert(L, base);

    arm(sb, scale ? scale : 1);
    int rc = lua_pcall(L, nargs, nresults, base);
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY); /* no longer sticky */
    sb->spent = SPENT_NOTHING;
    lua_remove(L, base);

    if (rc == LUA_OK) return 0;
    if (rc == LUA_ERRMEM)
        snprintf(err, errlen, "not enough memory (the pack's state holds %zu of %zu bytes)",
                 sb->mem_used, sb->limits.memory);
    else
        compact_error(lua_tostring(L, -1) ? lua_tostring(L, -1) : "?", err, errlen);
    lua_pop(L, 1);
    return -1;
}

/* Loads and runs a pack file; called protected, since loading allocates. */
static int run_file(lua_State *L) {
    Sandbox *sb = sandbox_of(L);
    const char *rel = lua_touserdata(L, 1);
    char err[PATH_MAX + 512] = "";

    int rc = load_source(sb, sb->pack_dir, dir_label(sb->pack_dir), rel, err, sizeof err);
    if (rc > 0) return luaL_error(L, "%s/%s not found", sb->pack_dir, rel);
    if (rc < 0) return luaL_error(L, "%s", err);
    lua_call(L, 0, 1);
    return 1;
}

int sandbox_run_file(Sandbox *sb, const char *relpath, char *err, size_t errlen) {
    lua_pushcfunction(sb->L, run_file);
    lua_pushlightuserdata(sb->L, (void *)relpath);
    return sandbox_call(sb, 1, 1, 10, err, errlen);
}
