/*
 * Definitions every daemon module shares: error codes, exit codes, assertions and clocks.
 * Kernels (kernels/) never include this file; they define their own small return codes.
 */
#ifndef PD_H
#define PD_H

#include <stdint.h>
#include <stddef.h>

#define PD_VERSION "0.1.0"

/* Module functions return 0 or one of these, and fill a caller-owned message buffer. */
enum {
    PD_OK = 0,
    PD_ERR = -1,      /* generic failure, the message says why */
    PD_ENOMEM = -2,   /* an allocation failed */
    PD_EINVAL = -3,   /* bad argument or bad external data */
    PD_EIO = -4,      /* a system call failed, the message carries strerror */
    PD_ECONFIG = -5,  /* the configuration is wrong; main exits with PD_EXIT_CONFIG */
    PD_ETIMEOUT = -6, /* a bounded wait ran out */
    PD_EFATAL = -7,   /* the process cannot continue safely (for example a fenced producer) */
};

/* Exit codes, from <sysexits.h>; systemd's RestartPreventExitStatus= keys on 78. */
enum {
    PD_EXIT_OK = 0,
    PD_EXIT_USAGE = 64,
    PD_EXIT_SOFTWARE = 70,
    PD_EXIT_TEMPFAIL = 75,
    PD_EXIT_CONFIG = 78,
};

/* A broken internal invariant: log where, then abort so that a core dump is left.
 * Never used on external data, which gets an error return instead. */
#define PD_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) pd_assert_fail(#cond, __FILE__, __LINE__);                                    \
    } while (0)

_Noreturn void pd_assert_fail(const char *what, const char *file, int line);

#define PD_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Monotonic clock, for durations and deadlines. */
uint64_t pd_mono_ns(void);
static inline uint64_t pd_mono_ms(void) {
    return pd_mono_ns() / 1000000u;
}

/* Wall clock in milliseconds since the epoch, for timestamps in messages. */
int64_t pd_wall_ms(void);

/* Where the shipped data lives (policies/, lua/, the default model): $PROMPTD_DATADIR if
 * set; else the source tree when the binary runs from its build directory; else the
 * directory chosen at build time (PD_DATADIR). */
const char *pd_datadir(void);

/* Allocation that aborts on failure. Only for small, bounded allocations at start-up, where
 * running out of memory leaves nothing sensible to do; per-message paths handle NULL. */
void *pd_xcalloc(size_t n, size_t size);
char *pd_xstrdup(const char *s);

#endif
