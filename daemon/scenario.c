/* The simulator's scenario host; see scenario.h. */
#include "scenario.h"

#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <lualib.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luacore.h"

struct Scenario {
    lua_State *L;
    int table; /* registry ref of the scenario's table */
    char *name;
    size_t n;
    char **names, **abouts;
    char *reward_src;
    char *pack_fields; /* more fields of the written pack, Lua source */
    bool has_eligible, has_event;
};

static int traceback(lua_State *L) {
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
}

/* Calls the function below nargs arguments on the stack, leaving nres results. */
static int call(lua_State *L, int nargs, int nres, const char *what, char *err, size_t errlen) {
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, traceback);
    lua_insert(L, base);
    int rc = lua_pcall(L, nargs, nres, base);
    lua_remove(L, base);
    if (rc == LUA_OK) return 0;
    snprintf(err, errlen, "%s: %s", what, lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
}

static bool field_is(lua_State *L, int table, const char *key, int type) {
    int t = lua_getfield(L, table, key);
    lua_pop(L, 1);
    return t == type;
}

static char *field_string(lua_State *L, int table, const char *key) {
    lua_getfield(L, table, key);
    char *s = lua_type(L, -1) == LUA_TSTRING ? strdup(lua_tostring(L, -1)) : NULL;
    lua_pop(L, 1);
    return s;
}

/* Reads templates = { {name=, about=}, ... } from the table on top. */
static int read_templates(Scenario *s, const char *path, char *err, size_t errlen) {
    lua_State *L = s->L;
    if (lua_getfield(L, -1, "templates") != LUA_TTABLE || luaL_len(L, -1) < 1) {
        snprintf(err, errlen, "%s: templates must be a non-empty list of {name=, about=}", path);
        return -1;
    }
    s->n = (size_t)luaL_len(L, -1);
    s->names = calloc(s->n, sizeof *s->names);
    s->abouts = calloc(s->n, sizeof *s->abouts);
    if (!s->names || !s->abouts) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < s->n; i++) {
        lua_geti(L, -1, (lua_Integer)i + 1);
        if (lua_istable(L, -1)) {
            s->names[i] = field_string(L, -1, "name");
            s->abouts[i] = field_string(L, -1, "about");
        }
        lua_pop(L, 1);
        if (!s->names[i]) {
            snprintf(err, errlen, "%s: templates[%zu] has no name", path, i + 1);
            return -1;
        }
        if (!s->abouts[i] && !(s->abouts[i] = strdup(""))) return -1;
    }
    lua_pop(L, 1);
    return 0;
}

/* package.path = the scenario's directory; math.randomseed(seed). */
static int prepare(lua_State *L, const char *path, uint64_t seed) {
    const char *slash = strrchr(path, '/');
    int dirlen = slash ? (int)(slash - path) : 1;
    const char *dir = slash ? path : ".";
    lua_getglobal(L, "package");
    char buf[PATH_MAX * 2 + 16];
    snprintf(buf, sizeof buf, "%.*s/?.lua;%.*s/?/init.lua", dirlen, dir, dirlen, dir);
    lua_pushstring(L, buf);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);

    lua_getglobal(L, "math");
    lua_getfield(L, -1, "randomseed");
    lua_pushinteger(L, (lua_Integer)(seed & 0x7fffffffffffffff));
    lua_call(L, 1, 0);
    lua_pop(L, 1);
    return 0;
}

static void push_params(lua_State *L, const char *const *params) {
    lua_newtable(L);
    for (size_t i = 0; params && params[i]; i++) {
        const char *eq = strchr(params[i], '=');
        if (!eq) continue;
        lua_pushlstring(L, params[i], (size_t)(eq - params[i]));
        lua_pushstring(L, eq + 1);
        lua_settable(L, -3);
    }
}

Scenario *scenario_load(const char *path, const char *const *params, uint64_t seed, char *err,
                        size_t errlen) {
    Scenario *s = calloc(1, sizeof *s);
    if (!s || !(s->L = luaL_newstate())) {
        snprintf(err, errlen, "out of memory");
        free(s);
        return NULL;
    }
    lua_State *L = s->L;
    luaL_openlibs(L);
    prepare(L, path, seed);

    if (luaL_loadfile(L, path) != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto fail;
    }
    push_params(L, params);
    if (call(L, 1, 1, path, err, errlen)) goto fail;
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen, "%s: the script must return a table", path);
        goto fail;
    }
    if (!field_is(L, -1, "situation", LUA_TFUNCTION) ||
        !field_is(L, -1, "quality", LUA_TFUNCTION)) {
        snprintf(err, errlen,
                 "%s: situation(i) and quality(situation, template) must be "
                 "functions",
                 path);
        goto fail;
    }
    if (read_templates(s, path, err, errlen)) goto fail;
    s->has_eligible = field_is(L, -1, "eligible", LUA_TFUNCTION);
    s->has_event = field_is(L, -1, "event", LUA_TFUNCTION);
    s->name = field_string(L, -1, "name");
    s->reward_src = field_string(L, -1, "reward");
    s->pack_fields = field_string(L, -1, "pack_fields");
    if (!s->name && !(s->name = strdup("scenario"))) goto fail;
    s->table = luaL_ref(L, LUA_REGISTRYINDEX);
    return s;

fail:
    scenario_free(s);
    return NULL;
}

void scenario_free(Scenario *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) {
        if (s->names) free(s->names[i]);
        if (s->abouts) free(s->abouts[i]);
    }
    free(s->names);
    free(s->abouts);
    free(s->name);
    free(s->reward_src);
    free(s->pack_fields);
    if (s->L) lua_close(s->L);
    free(s);
}

const char *scenario_name(const Scenario *s) {
    return s->name;
}
size_t scenario_template_count(const Scenario *s) {
    return s->n;
}
const char *scenario_template_name(const Scenario *s, size_t i) {
    return s->names[i];
}
const char *scenario_template_about(const Scenario *s, size_t i) {
    return s->abouts[i];
}

/* Pushes the scenario's function called name. */
static void push_function(Scenario *s, const char *name) {
    lua_rawgeti(s->L, LUA_REGISTRYINDEX, s->table);
    lua_getfield(s->L, -1, name);
    lua_remove(s->L, -2);
}

static int quality_of(Scenario *s, int ref, const char *name, double *q, char *err, size_t errlen) {
    lua_State *L = s->L;
    push_function(s, "quality");
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_pushstring(L, name);
    if (call(L, 2, 1, "quality", err, errlen)) return -1;
    int isnum;
    *q = lua_tonumberx(L, -1, &isnum);
    lua_pop(L, 1);
    if (isnum) return 0;
    snprintf(err, errlen, "quality(situation, \"%s\") did not return a number", name);
    return -1;
}

static int eligible(Scenario *s, int ref, const char *name, bool *yes, char *err, size_t errlen) {
    *yes = true;
    if (!s->has_eligible) return 0;
    push_function(s, "eligible");
    lua_rawgeti(s->L, LUA_REGISTRYINDEX, ref);
    lua_pushstring(s->L, name);
    if (call(s->L, 2, 1, "eligible", err, errlen)) return -1;
    *yes = lua_toboolean(s->L, -1);
    lua_pop(s->L, 1);
    return 0;
}

/* The oracle's and uniform random choice's expected quality for the situation. */
static int baselines(Scenario *s, Situation *sit, char *err, size_t errlen) {
    double best = -1e300, sum = 0;
    size_t k = 0;
    for (size_t i = 0; i < s->n; i++) {
        bool yes;
        double q;
        if (eligible(s, sit->ref, s->names[i], &yes, err, errlen)) return -1;
        if (!yes) continue;
        if (quality_of(s, sit->ref, s->names[i], &q, err, errlen)) return -1;
        if (q > best) best = q;
        sum += q;
        k++;
    }
    if (k == 0) {
        snprintf(err, errlen, "no template of the scenario is eligible for a situation");
        return -1;
    }
    sit->oracle = best;
    sit->uniform = sum / (double)k;
    return 0;
}

/* The prompt message (without id) of the situation table on top of the stack. */
static json_t *prompt_of(lua_State *L, char *err, size_t errlen) {
    if (!lua_istable(L, -1) || !field_is(L, -1, "text", LUA_TSTRING)) {
        snprintf(err, errlen, "situation(i) must return a table with a text");
        return NULL;
    }
    json_t *p = json_object();
    lua_getfield(L, -1, "text");
    json_object_set_new(p, "text", json_string(lua_tostring(L, -1)));
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "session") == LUA_TSTRING)
        json_object_set_new(p, "session", json_string(lua_tostring(L, -1)));
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "attrs") == LUA_TTABLE) {
        json_t *attrs = luacore_to_json(L, -1, err, errlen);
        if (!attrs) {
            lua_pop(L, 1);
            json_decref(p);
            return NULL;
        }
        json_object_set_new(p, "attrs", attrs);
    }
    lua_pop(L, 1);
    if (!json_object_get(p, "text")) { /* not UTF-8 */
        snprintf(err, errlen, "a situation's text is not UTF-8");
        json_decref(p);
        return NULL;
    }
    return p;
}

int scenario_next(Scenario *s, uint64_t i, Situation *out, char *err, size_t errlen) {
    lua_State *L = s->L;
    memset(out, 0, sizeof *out);
    out->ref = LUA_NOREF;
    push_function(s, "situation");
    lua_pushinteger(L, (lua_Integer)i);
    if (call(L, 1, 1, "situation", err, errlen)) return -1;
    out->prompt = prompt_of(L, err, errlen);
    out->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (!out->prompt || baselines(s, out, err, errlen)) {
        scenario_release(s, out);
        return -1;
    }
    return 0;
}

void scenario_release(Scenario *s, Situation *sit) {
    luaL_unref(s->L, LUA_REGISTRYINDEX, sit->ref);
    json_decref(sit->prompt);
    sit->prompt = NULL;
    sit->ref = LUA_NOREF;
}

int scenario_quality(Scenario *s, const Situation *sit, const char *template_name, double *q,
                     char *err, size_t errlen) {
    return quality_of(s, sit->ref, template_name, q, err, errlen);
}

int scenario_event(Scenario *s, const Situation *sit, const char *template_name, double q,
                   json_t **fields, double *delay_ms, char *err, size_t errlen) {
    lua_State *L = s->L;
    *delay_ms = 0;
    if (!s->has_event) {
        *fields = json_pack("{sf}", "score", q);
        return *fields ? 0 : -1;
    }
    push_function(s, "event");
    lua_rawgeti(L, LUA_REGISTRYINDEX, sit->ref);
    lua_pushstring(L, template_name);
    lua_pushnumber(L, q);
    if (call(L, 3, 2, "event", err, errlen)) return -1;
    *delay_ms = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 0;
    *fields = lua_istable(L, -2) ? luacore_to_json(L, -2, err, errlen) : NULL;
    if (!lua_istable(L, -2)) snprintf(err, errlen, "event() must return a table of fields");
    lua_pop(L, 2);
    if (*delay_ms < 0 || *delay_ms != *delay_ms) *delay_ms = 0;
    return *fields && json_is_object(*fields) ? 0 : -1;
}

/* Writes s as a Lua string literal. */
static void put_quoted(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(f, "\\%c", *c);
        else if (*c < 0x20)
            fprintf(f, "\\%03u", *c);
        else
            fputc(*c, f);
    }
    fputc('"', f);
}

int scenario_write_pack(const Scenario *s, const char *dir, char *err, size_t errlen) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/init.lua", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    fprintf(f,
            "-- Written by `promptctl simulate --write-pack` for scenario %s: its templates,\n"
            "-- each rendering the alarm and its description, and its reward.\n\n"
            "local pd = require \"promptd\"\n\n"
            "pd.set_pack_name(\"sim-%s\")\n\n"
            "local function template(name, about)\n"
            "    return {\n"
            "        name = name,\n"
            "        about = about,\n"
            "        render = function(msg)\n"
            "            return pd.interp(\"Alarm: ${text}\\n\\n\", msg) .. about\n"
            "        end,\n"
            "    }\n"
            "end\n\n"
            "return {\n"
            "    name = \"sim-%s\",\n"
            "    templates = {\n",
            s->name, s->name, s->name);
    for (size_t i = 0; i < s->n; i++) {
        fprintf(f, "        template(");
        put_quoted(f, s->names[i]);
        fprintf(f, ", ");
        put_quoted(f, s->abouts[i][0] ? s->abouts[i] : s->names[i]);
        fprintf(f, "),\n");
    }
    fprintf(f, "    },\n    reward = function(event, decision)\n        %s\n    end,\n%s}\n",
            s->reward_src ? s->reward_src : "return tonumber(event.score)",
            s->pack_fields ? s->pack_fields : "");
    if (fclose(f)) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}
