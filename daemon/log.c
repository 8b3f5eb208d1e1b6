/*
 * Logging: level filter, per-module debug switches, rate limit of repeated problems, and
 * one write(2) per line so that lines from several threads never interleave.
 */
#include "log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "pd.h"

#define LOG_LINE_MAX    4096
#define RATELIMIT_SLOTS 64

static const char *const level_names[] = {"emerg",   "alert",  "crit", "err",
                                          "warning", "notice", "info", "debug"};

static const char *const module_names[PD_MOD_COUNT] = {
    [PD_MOD_MAIN] = "main",       [PD_MOD_CONFIG] = "config",   [PD_MOD_KAFKA] = "kafka",
    [PD_MOD_RDKAFKA] = "rdkafka", [PD_MOD_BROKER] = "broker",   [PD_MOD_PIPELINE] = "pipeline",
    [PD_MOD_LUA] = "lua",         [PD_MOD_ENCODER] = "encoder", [PD_MOD_CACHE] = "cache",
    [PD_MOD_POLICY] = "policy",   [PD_MOD_LEARNER] = "learner",
};

/* One repeated problem: lines whose text is the same once digits are ignored. */
typedef struct {
    uint64_t key;          /* hash of module and digit-free text; 0 = free slot */
    uint64_t window_start; /* ms, monotonic */
    unsigned count;        /* lines seen in this window */
    unsigned suppressed;   /* lines not written in this window */
    int level;
    PdLogModule module;
    char sample[160]; /* the first suppressed line, to name what was suppressed */
} RateSlot;

static atomic_int threshold = PD_LOG_INFO;
static atomic_uint debug_mask;
static atomic_uint rl_burst = 5;
static atomic_uint_fast64_t rl_interval_ms = 10000;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static RateSlot slots[RATELIMIT_SLOTS];
static PdLogSink sink;
static void *sink_ctx;

/* --- settings --- */

void pd_log_set_level(int level) {
    if (level >= PD_LOG_EMERG && level <= PD_LOG_DEBUG) atomic_store(&threshold, level);
}

void pd_log_set_debug_mask(uint32_t mask) {
    atomic_store(&debug_mask, mask);
}

void pd_log_set_ratelimit(unsigned burst, uint64_t interval_ms) {
    atomic_store(&rl_burst, burst);
    atomic_store(&rl_interval_ms, interval_ms);
}

void pd_log_set_sink(PdLogSink fn, void *ctx) {
    pthread_mutex_lock(&lock);
    sink = fn;
    sink_ctx = ctx;
    pthread_mutex_unlock(&lock);
}

int pd_log_level_parse(const char *name) {
    if (!strcmp(name, "error")) return PD_LOG_ERR;
    if (!strcmp(name, "warn")) return PD_LOG_WARNING;
    for (int i = 0; i < (int)PD_ARRAY_LEN(level_names); i++)
        if (!strcmp(name, level_names[i])) return i;
    return -1;
}

const char *pd_log_level_name(int level) {
    return level >= 0 && level <= PD_LOG_DEBUG ? level_names[level] : "?";
}

const char *pd_log_module_name(PdLogModule module) {
    return module < PD_MOD_COUNT ? module_names[module] : "?";
}

static int module_lookup(const char *name, size_t len) {
    for (int i = 0; i < PD_MOD_COUNT; i++)
        if (strlen(module_names[i]) == len && !strncmp(module_names[i], name, len)) return i;
    return -1;
}

int pd_log_debug_parse(const char *list, uint32_t *mask, char *bad, size_t badlen) {
    *mask = 0;
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ", ");
        if (len == 3 && !strncmp(p, "all", 3)) {
            *mask = (1u << PD_MOD_COUNT) - 1;
        } else if (len > 0) {
            int module = module_lookup(p, len);
            if (module < 0) {
                snprintf(bad, badlen, "%.*s", (int)len, p);
                return -1;
            }
            *mask |= 1u << module;
        }
        p += len;
        p += strspn(p, ", ");
    }
    return 0;
}

bool pd_log_enabled(int level, PdLogModule module) {
    if (level <= atomic_load_explicit(&threshold, memory_order_relaxed)) return true;
    return level == PD_LOG_DEBUG &&
           (atomic_load_explicit(&debug_mask, memory_order_relaxed) & (1u << module));
}

/* --- output --- */

/* Caller holds the lock. */
static void emit(int level, const char *line, size_t len) {
    if (sink) {
        sink(sink_ctx, level, line);
        return;
    }

    char buf[LOG_LINE_MAX + 2];
    memcpy(buf, line, len);
    buf[len] = '\n';
    /* One write per line: a short write to a pipe of this size does not happen, and if
     * stderr is gone there is nowhere left to report it. */
    ssize_t unused = write(STDERR_FILENO, buf, len + 1);
    (void)unused;
}

static uint64_t text_key(PdLogModule module, const char *text) {
    uint64_t h = 1469598103934665603u ^ (uint64_t)module; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p >= '0' && *p <= '9') continue;
        h = (h ^ *p) * 1099511628211u;
    }
    return h ? h : 1;
}

static void report_suppressed(RateSlot *slot) {
    char line[LOG_LINE_MAX];
    int len = snprintf(line, sizeof line, "<%d>%s: suppressed %u repeats of: %s", slot->level,
                       module_names[slot->module], slot->suppressed, slot->sample);
    emit(slot->level, line, len < (int)sizeof line ? (size_t)len : sizeof line - 1);
    slot->suppressed = 0;
}

/* Finds the slot of key, reusing the oldest when the table is full. Caller holds the lock. */
static RateSlot *slot_for(uint64_t key) {
    RateSlot *oldest = &slots[0];
    for (int i = 0; i < RATELIMIT_SLOTS; i++) {
        if (slots[i].key == key) return &slots[i];
        if (slots[i].window_start < oldest->window_start) oldest = &slots[i];
    }
    if (oldest->key && oldest->suppressed) report_suppressed(oldest);
    memset(oldest, 0, sizeof *oldest);
    oldest->key = key;
    return oldest;
}

/* Decides whether a warning or error line is written. Caller holds the lock. */
static bool ratelimit_pass(int level, PdLogModule module, const char *text) {
    unsigned burst = atomic_load(&rl_burst);
    if (burst == 0 || level > PD_LOG_WARNING) return true;

    uint64_t now = pd_mono_ms();
    RateSlot *slot = slot_for(text_key(module, text));
    if (slot->count == 0 || now - slot->window_start >= atomic_load(&rl_interval_ms)) {
        if (slot->suppressed) report_suppressed(slot);
        slot->window_start = now;
        slot->count = 0;
    }
    slot->level = level;
    slot->module = module;

    if (++slot->count <= burst) return true;
    if (slot->suppressed++ == 0) snprintf(slot->sample, sizeof slot->sample, "%s", text);
    return false;
}

void pd_log_writev(int level, PdLogModule module, const char *fmt, va_list ap) {
    char line[LOG_LINE_MAX];
    if (level < PD_LOG_EMERG) level = PD_LOG_EMERG;
    if (level > PD_LOG_DEBUG) level = PD_LOG_DEBUG;
    if (module >= PD_MOD_COUNT) module = PD_MOD_MAIN;

    int prefix = snprintf(line, sizeof line, "<%d>%s: ", level, module_names[module]);
    int len = vsnprintf(line + prefix, sizeof line - prefix, fmt, ap);
    size_t total = (size_t)prefix + (len < 0 ? 0 : (size_t)len);
    if (total >= sizeof line) total = sizeof line - 1;

    /* A message with a newline would become two journal entries, the second without a
     * level; keep one event on one line. */
    for (size_t i = (size_t)prefix; i < total; i++)
        if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';

    pthread_mutex_lock(&lock);
    if (ratelimit_pass(level, module, line + prefix)) emit(level, line, total);
    pthread_mutex_unlock(&lock);
}

void pd_log_write(int level, PdLogModule module, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    pd_log_writev(level, module, fmt, ap);
    va_end(ap);
}

void pd_log_tick(void) {
    uint64_t now = pd_mono_ms();
    uint64_t interval = atomic_load(&rl_interval_ms);

    pthread_mutex_lock(&lock);
    for (int i = 0; i < RATELIMIT_SLOTS; i++) {
        RateSlot *slot = &slots[i];
        if (slot->key && slot->suppressed && now - slot->window_start >= interval) {
            report_suppressed(slot);
            slot->count = 0;
        }
    }
    pthread_mutex_unlock(&lock);
}
