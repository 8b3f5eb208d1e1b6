/* Shared helpers of the daemon: clocks, assertions, start-up allocation. */
#include "pd.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

_Noreturn void pd_assert_fail(const char *what, const char *file, int line) {
    pd_log(PD_LOG_CRIT, PD_MOD_MAIN,
           "assertion failed: %s at %s:%d; this is a bug, please report it with this line", what,
           file, line);
    abort();
}

uint64_t pd_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int64_t pd_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void *pd_xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) pd_assert_fail("out of memory at start-up", __FILE__, __LINE__);
    return p;
}

char *pd_xstrdup(const char *s) {
    size_t len = strlen(s) + 1;
    char *copy = pd_xcalloc(1, len);
    memcpy(copy, s, len);
    return copy;
}
