/*
 * The one logging function of promptd.
 *
 * Lines go to stderr as "<N>module: message key=value", where <N> is the syslog level that
 * journald reads (SyslogLevelPrefix=). No timestamp: journald adds its own. A line is only
 * formatted when its level passes the filter, so debug calls cost a branch when off.
 *
 * Errors and warnings that repeat (the same text once digits are ignored) are rate-limited
 * per window; when the window closes one line says how many were suppressed.
 *
 * Thread-safe: the serving thread, the learner and librdkafka's log queue all log here.
 */
#ifndef PD_LOG_H
#define PD_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

/* Syslog levels. */
enum {
    PD_LOG_EMERG = 0,
    PD_LOG_ALERT = 1,
    PD_LOG_CRIT = 2,
    PD_LOG_ERR = 3,
    PD_LOG_WARNING = 4,
    PD_LOG_NOTICE = 5,
    PD_LOG_INFO = 6,
    PD_LOG_DEBUG = 7,
};

/* Modules, each with its own debug switch (log.debug kafka,pipeline). */
typedef enum {
    PD_MOD_MAIN,
    PD_MOD_CONFIG,
    PD_MOD_KAFKA,
    PD_MOD_RDKAFKA, /* lines from librdkafka itself */
    PD_MOD_BROKER,  /* the embedded mock cluster */
    PD_MOD_PIPELINE,
    PD_MOD_LUA, /* policy packs and their sandbox */
    PD_MOD_ENCODER,
    PD_MOD_CACHE,
    PD_MOD_POLICY,
    PD_MOD_LEARNER,
    PD_MOD_COUNT
} PdLogModule;

/* Logs when level passes log.level, or when it is debug and module's switch is on. */
#define pd_log(level, module, ...)                                                                 \
    do {                                                                                           \
        if (pd_log_enabled((level), (module))) pd_log_write((level), (module), __VA_ARGS__);       \
    } while (0)

bool pd_log_enabled(int level, PdLogModule module);
void pd_log_write(int level, PdLogModule module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void pd_log_writev(int level, PdLogModule module, const char *fmt, va_list ap);

/* Settings; safe to change while other threads log (a reload does). */
void pd_log_set_level(int level);
void pd_log_set_debug_mask(uint32_t mask); /* bit (1u << module) */
void pd_log_set_ratelimit(unsigned burst, uint64_t interval_ms);

/* Parses a level name (err, warning, info, ...; also "error" and "warn"); -1 if unknown. */
int pd_log_level_parse(const char *name);
const char *pd_log_level_name(int level);

/* Parses "kafka,pipeline" or "all" into a debug mask. Returns 0, or -1 with the first
 * unknown name copied to bad. */
int pd_log_debug_parse(const char *list, uint32_t *mask, char *bad, size_t badlen);
const char *pd_log_module_name(PdLogModule module);

/* Reports windows that closed with suppressed lines; the main loop calls it about once a
 * second so that a burst that stops is still accounted for. */
void pd_log_tick(void);

/* Tests capture lines here instead of stderr; NULL restores stderr. The sink receives the
 * whole line with its <N> prefix, without the newline. */
typedef void (*PdLogSink)(void *ctx, int level, const char *line);
void pd_log_set_sink(PdLogSink sink, void *ctx);

#endif
