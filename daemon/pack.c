/* The policy-pack host: loading, checking, and the calls the serving path makes. */
#include "pack.h"

#include <inttypes.h>
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/normalize.h"
#include "log.h"
#include "luacore.h"
#include "pd.h"

#define RENDER_MAX (1024 * 1024) /* bytes of one rendered prompt */
#define ABOUT_MAX  1000          /* bytes of a template's about sentence */
#define LOAD_SCALE 20            /* loading and self-tests get 20 calls' worth of budget */

typedef struct {
    PackTemplate pub;
    char name[PACK_NAME_MAX + 1];
    char *about;
    int render_ref, eligible_ref; /* registry references; LUA_NOREF when absent */
} Template;

struct Pack {
    Sandbox *sb;
    lua_State *L;
    char name[PACK_NAME_MAX + 1];
    char version[17];
    char *dir;

    Template *templates;
    size_t ntemplates;
    char **features;
    size_t nfeatures;
    int table_ref; /* the table init.lua returned, kept alive with all it refers to */
    int reward_ref, features_ref, msg_ref;

    uint64_t eligible_errors;
};

/* Messages every template must render at load, whatever its eligibility says: an
 * English and a Chinese alarm, and the least a prompt can be. */
static const char *const sample_messages[] = {
    "{\"id\":\"sample-en\",\"text\":\"WTG-12 gearbox bearing temperature 92C above limit\","
    "\"session\":\"sample-incident\",\"attrs\":{\"site\":\"north-ridge\",\"severity\":"
    "\"major\",\"source\":\"scada\"}}",
    "{\"id\":\"sample-zh\",\"text\":\"风机12号 齿轮箱轴承温度 92°C 超限\",\"attrs\":{}}",
    "{\"id\":\"sample-min\",\"text\":\"x\"}",
};

const char *pack_name(const Pack *p) {
    return p->name;
}

const char *pack_version(const Pack *p) {
    return p->version;
}

const char *pack_dir(const Pack *p) {
    return p->dir;
}

size_t pack_template_count(const Pack *p) {
    return p->ntemplates;
}

const PackTemplate *pack_template(const Pack *p, size_t i) {
    return i < p->ntemplates ? &p->templates[i].pub : NULL;
}

int pack_template_index(const Pack *p, const char *name) {
    for (size_t i = 0; i < p->ntemplates; i++)
        if (!strcmp(p->templates[i].name, name)) return (int)i;
    return -1;
}

size_t pack_feature_count(const Pack *p) {
    return p->nfeatures;
}

const char *pack_feature_name(const Pack *p, size_t i) {
    return i < p->nfeatures ? p->features[i] : NULL;
}

uint64_t pack_eligible_errors(const Pack *p) {
    return p->eligible_errors;
}

void pack_free(Pack *p) {
    if (!p) return;
    sandbox_free(p->sb);
    for (size_t i = 0; i < p->ntemplates; i++) free(p->templates[i].about);
    free(p->templates);
    for (size_t i = 0; i < p->nfeatures; i++) free(p->features[i]);
    free(p->features);
    free(p->dir);
    free(p);
}

/* --- checking the shape of the returned table --- */

static bool name_ok(const char *s, size_t len);

/* Whether the string at the top of the stack is a valid name. */
static bool name_at_top_ok(lua_State *L) {
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    return name_ok(s, len);
}

static bool name_ok(const char *s, size_t len) {
    if (len == 0 || len > PACK_NAME_MAX) return false;
    for (size_t i = 0; i < len; i++)
        if (!(s[i] == '_' || s[i] == '-' || s[i] == '.' || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9')))
            return false;
    return true;
}

/* Takes the function in field `key` of the table at idx into the registry. Returns 0 (ref
 * LUA_NOREF when absent and optional) or -1 with err. */
static int take_function(lua_State *L, int idx, const char *key, bool required, int *ref,
                         const char *where, char *err, size_t errlen) {
    int t = lua_getfield(L, idx, key);
    *ref = LUA_NOREF;
    if (t == LUA_TFUNCTION) {
        *ref = luaL_ref(L, LUA_REGISTRYINDEX);
        return 0;
    }
    lua_pop(L, 1);
    if (t == LUA_TNIL && !required) return 0;
    snprintf(err, errlen, "%s.%s must be a function, not %s", where, key,
             t == LUA_TNIL ? "missing" : lua_typename(L, t));
    return -1;
}

static int check_template(Pack *p, int idx, size_t i, char *err, size_t errlen) {
    lua_State *L = p->L;
    Template *t = &p->templates[i];
    char where[PACK_NAME_MAX + 32];
    snprintf(where, sizeof where, "templates[%zu]", i + 1);

    if (lua_getfield(L, idx, "name") != LUA_TSTRING || !name_at_top_ok(L)) {
        snprintf(err, errlen,
                 "%s.name must be a string of 1 to %d letters, digits, '_', '-' "
                 "or '.'",
                 where, PACK_NAME_MAX);
        return -1;
    }
    snprintf(t->name, sizeof t->name, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    snprintf(where, sizeof where, "template '%s'", t->name);

    if (lua_getfield(L, idx, "about") != LUA_TSTRING || lua_rawlen(L, -1) == 0 ||
        lua_rawlen(L, -1) > ABOUT_MAX) {
        snprintf(err, errlen,
                 "%s: about must be a sentence of 1 to %d bytes saying what the "
                 "template is for",
                 where, ABOUT_MAX);
        return -1;
    }
    t->about = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    if (!t->about) return snprintf(err, errlen, "out of memory"), -1;

    if (take_function(L, idx, "render", true, &t->render_ref, where, err, errlen) ||
        take_function(L, idx, "eligible", false, &t->eligible_ref, where, err, errlen))
        return -1;
    t->pub = (PackTemplate){t->name, t->about, t->eligible_ref != LUA_NOREF};
    return 0;
}

static int check_templates(Pack *p, int idx, char *err, size_t errlen) {
    lua_State *L = p->L;
    if (lua_getfield(L, idx, "templates") != LUA_TTABLE || lua_rawlen(L, -1) == 0) {
        snprintf(err, errlen, "the pack must return a table with a non-empty list `templates`");
        return -1;
    }
    size_t n = lua_rawlen(L, -1);
    if (n > PACK_TEMPLATES_MAX) {
        snprintf(err, errlen, "%zu templates, at most %d allowed", n, PACK_TEMPLATES_MAX);
        return -1;
    }
    p->templates = calloc(n, sizeof *p->templates);
    if (!p->templates) return snprintf(err, errlen, "out of memory"), -1;

    for (size_t i = 0; i < n; i++) {
        if (lua_rawgeti(L, -1, (lua_Integer)i + 1) != LUA_TTABLE) {
            snprintf(err, errlen, "templates[%zu] must be a table", i + 1);
            return -1;
        }
        p->templates[i].render_ref = p->templates[i].eligible_ref = LUA_NOREF;
        p->ntemplates = i + 1;
        if (check_template(p, lua_gettop(L), i, err, errlen)) return -1;
        lua_pop(L, 1);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(p->templates[j].name, p->templates[i].name)) continue;
            snprintf(err, errlen, "template name '%s' is used twice (templates[%zu] and [%zu])",
                     p->templates[i].name, j + 1, i + 1);
            return -1;
        }
    }
    lua_pop(L, 1);
    return 0;
}

static int check_feature_names(Pack *p, int idx, char *err, size_t errlen) {
    lua_State *L = p->L;
    int t = lua_getfield(L, idx, "feature_names");
    if (p->features_ref == LUA_NOREF) {
        lua_pop(L, 1);
        if (t == LUA_TNIL) return 0;
        snprintf(err, errlen, "feature_names is given but features() is not");
        return -1;
    }
    size_t n = t == LUA_TTABLE ? lua_rawlen(L, -1) : 0;
    if (n == 0 || n > PACK_FEATURES_MAX) {
        snprintf(err, errlen, "features() needs feature_names: a list of 1 to %d names",
                 PACK_FEATURES_MAX);
        return -1;
    }
    p->features = calloc(n, sizeof *p->features);
    if (!p->features) return snprintf(err, errlen, "out of memory"), -1;
    for (size_t i = 0; i < n; i++) {
        if (lua_rawgeti(L, -1, (lua_Integer)i + 1) != LUA_TSTRING || !name_at_top_ok(L)) {
            snprintf(err, errlen, "feature_names[%zu] must be a name", i + 1);
            return -1;
        }
        p->features[i] = strdup(lua_tostring(L, -1));
        p->nfeatures = i + 1;
        lua_pop(L, 1);
        if (!p->features[i]) return snprintf(err, errlen, "out of memory"), -1;
    }
    lua_pop(L, 1);
    return 0;
}

static int check_shape(Pack *p, int idx, char *err, size_t errlen) {
    lua_State *L = p->L;
    if (!lua_istable(L, idx)) {
        snprintf(err, errlen, "init.lua must return a table (it returned %s)",
                 luaL_typename(L, idx));
        return -1;
    }
    int t = lua_getfield(L, idx, "name");
    if (t == LUA_TSTRING && name_at_top_ok(L))
        snprintf(p->name, sizeof p->name, "%s", lua_tostring(L, -1));
    else if (t != LUA_TNIL)
        return snprintf(err, errlen, "name must be a short name like \"alarm\""), -1;
    lua_pop(L, 1);

    if (check_templates(p, idx, err, errlen) ||
        take_function(L, idx, "reward", true, &p->reward_ref, "pack", err, errlen) ||
        take_function(L, idx, "features", false, &p->features_ref, "pack", err, errlen))
        return -1;
    return check_feature_names(p, idx, err, errlen);
}

/* check_shape, protected: the checks allocate (keys, references). Keeps the table. */
static int shape_call(lua_State *L) {
    Pack *p = lua_touserdata(L, 1);
    char err[512];
    if (check_shape(p, 2, err, sizeof err)) return luaL_error(L, "%s", err);
    lua_pushvalue(L, 2);
    p->table_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* --- binding a message --- */

static void push_message(lua_State *L, const Prompt *pr, const char *norm, size_t norm_len) {
    lua_createtable(L, 0, 5);
    lua_pushlstring(L, pr->id, pr->id_len);
    lua_setfield(L, -2, "id");
    lua_pushlstring(L, pr->text, pr->text_len);
    lua_setfield(L, -2, "text");
    lua_pushlstring(L, norm, norm_len);
    lua_setfield(L, -2, "normalized");
    if (pr->session) {
        lua_pushlstring(L, pr->session, pr->session_len);
        lua_setfield(L, -2, "session");
    }
    if (pr->attrs)
        luacore_push_json(L, pr->attrs);
    else
        lua_newtable(L);
    lua_setfield(L, -2, "attrs");
}

/* Every step that allocates in the Lua state runs protected, as here: an allocation that
 * fails raises an error, and outside a protected call that error would abort. */
static int bind_message(lua_State *L) {
    Pack *p = lua_touserdata(L, 1);
    const Prompt *pr = lua_touserdata(L, 2);
    const char *norm = lua_touserdata(L, 3);
    push_message(L, pr, norm, (size_t)lua_tointeger(L, 4));
    p->msg_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

int pack_bind(Pack *p, const Prompt *prompt, const char *norm, size_t norm_len, char *err,
              size_t errlen) {
    lua_State *L = p->L;
    pack_unbind(p);

    lua_pushcfunction(L, bind_message);
    lua_pushlightuserdata(L, p);
    lua_pushlightuserdata(L, (void *)prompt);
    lua_pushlightuserdata(L, (void *)norm);
    lua_pushinteger(L, (lua_Integer)norm_len);
    return sandbox_call(p->sb, 4, 0, 1, err, errlen);
}

void pack_unbind(Pack *p) {
    if (p->msg_ref == LUA_NOREF) return;
    luaL_unref(p->L, LUA_REGISTRYINDEX, p->msg_ref);
    p->msg_ref = LUA_NOREF;
}

/* --- the calls --- */

static void push_ref(lua_State *L, int ref) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
}

size_t pack_eligible(Pack *p, bool *eligible) {
    char err[512];
    size_t n = 0;
    for (size_t i = 0; i < p->ntemplates; i++) {
        Template *t = &p->templates[i];
        eligible[i] = true;
        if (t->eligible_ref != LUA_NOREF) {
            push_ref(p->L, t->eligible_ref);
            push_ref(p->L, p->msg_ref);
            if (sandbox_call(p->sb, 1, 1, 1, err, sizeof err)) {
                p->eligible_errors++;
                pd_log(PD_LOG_WARNING, PD_MOD_LUA, "pack %s: eligible() of template '%s': %s",
                       p->name, t->name, err);
                eligible[i] = false;
            } else {
                eligible[i] = lua_toboolean(p->L, -1);
                lua_pop(p->L, 1);
            }
        }
        n += eligible[i];
    }
    return n;
}

static void push_context(Pack *p, const Template *t, int64_t now_ms) {
    lua_State *L = p->L;
    lua_createtable(L, 0, 4);
    lua_pushstring(L, t->name);
    lua_setfield(L, -2, "template");
    lua_pushstring(L, p->name);
    lua_setfield(L, -2, "pack");
    lua_pushstring(L, p->version);
    lua_setfield(L, -2, "pack_version");
    lua_pushinteger(L, now_ms);
    lua_setfield(L, -2, "now_ms");
}

/* render(msg, ctx), with the context built inside the protected call. */
static int render_call(lua_State *L) {
    Pack *p = lua_touserdata(L, 1);
    const Template *t = lua_touserdata(L, 2);
    int64_t now_ms = lua_tointeger(L, 3);
    lua_settop(L, 0);
    push_ref(L, t->render_ref);
    push_ref(L, p->msg_ref);
    push_context(p, t, now_ms);
    lua_call(L, 2, 1);
    return 1;
}

int pack_render(Pack *p, size_t i, int64_t now_ms, MsgBuf *out, char *err, size_t errlen) {
    lua_State *L = p->L;
    const Template *t = &p->templates[i];
    char why[768];
    size_t len;

    lua_pushcfunction(L, render_call);
    lua_pushlightuserdata(L, p);
    lua_pushlightuserdata(L, (void *)t);
    lua_pushinteger(L, now_ms);
    if (sandbox_call(p->sb, 3, 1, 1, why, sizeof why)) {
        snprintf(err, errlen, "pack %s: render of template '%s': %s", p->name, t->name, why);
        return -1;
    }

    int type = lua_type(L, -1);
    const char *text = type == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
    if (!text || len == 0 || len > RENDER_MAX) {
        snprintf(err, errlen,
                 "pack %s: render of template '%s' returned %s; it must return "
                 "a non-empty string of at most %d bytes",
                 p->name, t->name,
                 text ? (len ? "a string too long" : "an empty string") : lua_typename(L, type),
                 RENDER_MAX);
        lua_pop(L, 1);
        return -1;
    }

    char *grown = out->cap < len ? realloc(out->data, len) : out->data;
    if (!grown) {
        lua_pop(L, 1);
        snprintf(err, errlen, "out of memory for a %zu-byte prompt", len);
        return -1;
    }
    if (out->cap < len) out->cap = len;
    out->data = grown;
    memcpy(out->data, text, len);
    out->len = len;
    lua_pop(L, 1);
    return 0;
}

/* Calls features(msg) and reads the result into out, by position or by declared name;
 * runs protected (reading a field by name may allocate its key). */
static int features_call(lua_State *L) {
    Pack *p = lua_touserdata(L, 1);
    float *out = lua_touserdata(L, 2);
    lua_settop(L, 0);
    push_ref(L, p->features_ref);
    push_ref(L, p->msg_ref);
    lua_call(L, 1, 1);
    if (!lua_istable(L, 1))
        return luaL_error(L, "features() returned %s, not a table", luaL_typename(L, 1));

    for (size_t i = 0; i < p->nfeatures; i++) {
        if (lua_rawgeti(L, 1, (lua_Integer)i + 1) == LUA_TNIL) {
            lua_pop(L, 1);
            lua_getfield(L, 1, p->features[i]);
        }
        int isnum;
        double v = lua_tonumberx(L, -1, &isnum);
        lua_pop(L, 1);
        if (!isnum || !isfinite(v))
            return luaL_error(L,
                              "features() gave %s for '%s'; each feature must be a finite "
                              "number",
                              isnum ? "a non-finite number" : "no number", p->features[i]);
        out[i] = (float)v;
    }
    return 0;
}

int pack_features(Pack *p, float *out, char *err, size_t errlen) {
    char why[768];
    memset(out, 0, p->nfeatures * sizeof *out);
    if (p->features_ref == LUA_NOREF) return 0;

    lua_pushcfunction(p->L, features_call);
    lua_pushlightuserdata(p->L, p);
    lua_pushlightuserdata(p->L, out);
    if (sandbox_call(p->sb, 2, 0, 1, why, sizeof why)) {
        snprintf(err, errlen, "pack %s: %s", p->name, why);
        memset(out, 0, p->nfeatures * sizeof *out);
        return -1;
    }
    return 0;
}

static int push_reward_args(lua_State *L) {
    luacore_push_json(L, lua_touserdata(L, 1));
    luacore_push_json(L, lua_touserdata(L, 2));
    return 2;
}

int pack_reward(Pack *p, const json_t *event, const json_t *decision, double *reward, char *err,
                size_t errlen) {
    lua_State *L = p->L;
    char why[768];

    /* Converting the events allocates, so it runs protected too. */
    push_ref(L, p->reward_ref);
    lua_pushcfunction(L, push_reward_args);
    lua_pushlightuserdata(L, (void *)event);
    lua_pushlightuserdata(L, (void *)decision);
    int rc = sandbox_call(p->sb, 2, 2, 1, why, sizeof why);
    if (rc) lua_pop(L, 1); /* the reward function, never called */
    if (rc || sandbox_call(p->sb, 2, 1, 1, why, sizeof why)) {
        snprintf(err, errlen, "pack %s: reward(): %s", p->name, why);
        return -1;
    }

    int type = lua_type(L, -1), isnum;
    double r = lua_tonumberx(L, -1, &isnum);
    lua_pop(L, 1);
    if (type == LUA_TNIL) return 0;
    if (type == LUA_TNUMBER && isfinite(r)) {
        *reward = r;
        return 1;
    }
    snprintf(err, errlen, "pack %s: reward() returned %s; it must return a finite number or nil",
             p->name, type == LUA_TNUMBER ? "a non-finite number" : lua_typename(L, type));
    (void)isnum;
    return -1;
}

/* --- the load-time checks --- */

/* Renders every template, and computes the features, for one sample message. */
static int check_sample(Pack *p, const char *json, char *err, size_t errlen) {
    Prompt pr;
    char why[256];
    if (msg_decode_prompt(&pr, json, strlen(json), 65536, why, sizeof why) != MSG_OK) {
        snprintf(err, errlen, "sample message: %s", why);
        return -1;
    }

    size_t ncap = norm_out_cap(pr.text_len), wcap = norm_work_cap(pr.text_len);
    char *norm = malloc(ncap);
    int32_t *work = malloc(wcap * sizeof *work);
    ptrdiff_t nlen =
        norm && work ? norm_text(norm, ncap, pr.text, pr.text_len, work, wcap, NORM_MASK) : -1;
    MsgBuf out = {0};
    float features[PACK_FEATURES_MAX];
    bool eligible[PACK_TEMPLATES_MAX];
    int rc = nlen < 0 ? (snprintf(err, errlen, "out of memory"), -1)
                      : pack_bind(p, &pr, norm, (size_t)nlen, err, errlen);
    if (rc == 0) pack_eligible(p, eligible);
    for (size_t i = 0; rc == 0 && i < p->ntemplates; i++)
        rc = pack_render(p, i, 0, &out, err, errlen);
    if (rc == 0) rc = pack_features(p, features, err, errlen);
    if (rc) snprintf(err + strlen(err), errlen - strlen(err), " (sample message %s)", pr.id);

    pack_unbind(p);
    msg_buf_free(&out);
    msg_prompt_free(&pr);
    free(norm);
    free(work);
    return rc ? -1 : 0;
}

/* The pack's optional self_test(pack), protected like every step that allocates. */
static int self_test_call(lua_State *L) {
    int t = lua_getfield(L, 1, "self_test");
    if (t == LUA_TNIL) return 0;
    if (t != LUA_TFUNCTION) return luaL_error(L, "self_test must be a function");
    lua_pushvalue(L, 1);
    lua_call(L, 1, 0);
    return 0;
}

static int run_self_test(Pack *p, int idx, char *err, size_t errlen) {
    char why[512];
    lua_pushcfunction(p->L, self_test_call);
    lua_pushvalue(p->L, idx);
    if (sandbox_call(p->sb, 1, 0, LOAD_SCALE, why, sizeof why)) {
        snprintf(err, errlen, "self_test failed: %s", why);
        return -1;
    }
    return 0;
}

static void default_name(Pack *p, const char *dir) {
    const char *end = dir + strlen(dir);
    while (end > dir && end[-1] == '/') end--;
    const char *start = end;
    while (start > dir && start[-1] != '/') start--;
    size_t len = (size_t)(end - start);
    if (!name_ok(start, len)) start = "pack", len = 4;
    snprintf(p->name, sizeof p->name, "%.*s", (int)len, start);
}

Pack *pack_load(const char *dir, const char *lib_dir, const SandboxLimits *limits, char *err,
                size_t errlen) {
    char why[768];
    Pack *p = calloc(1, sizeof *p);
    if (!p || !(p->dir = strdup(dir))) {
        snprintf(err, errlen, "out of memory");
        free(p);
        return NULL;
    }
    p->table_ref = p->reward_ref = p->features_ref = p->msg_ref = LUA_NOREF;
    default_name(p, dir);

    p->sb = sandbox_new(p->name, dir, lib_dir, limits, why, sizeof why);
    if (!p->sb || sandbox_run_file(p->sb, "init.lua", why, sizeof why)) goto fail;
    p->L = sandbox_state(p->sb);

    int idx = lua_gettop(p->L);
    lua_pushcfunction(p->L, shape_call);
    lua_pushlightuserdata(p->L, p);
    lua_pushvalue(p->L, idx);
    if (sandbox_call(p->sb, 2, 0, LOAD_SCALE, why, sizeof why)) goto fail;
    snprintf(p->version, sizeof p->version, "%016" PRIx64, sandbox_files_hash(p->sb));
    for (size_t i = 0; i < PD_ARRAY_LEN(sample_messages); i++)
        if (check_sample(p, sample_messages[i], why, sizeof why)) goto fail;
    if (run_self_test(p, idx, why, sizeof why)) goto fail;
    lua_settop(p->L, 0);
    return p;

fail:
    snprintf(err, errlen, "pack %s (%s): %s", p->name, dir, why);
    pack_free(p);
    return NULL;
}
