/* Shared helpers of the daemon: clocks, assertions, start-up allocation, data paths. */
#include "pd.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

#ifndef PD_DATADIR
#define PD_DATADIR "/usr/local/share/promptd"
#endif

/* A binary in <tree>/build/ (or build/san/, the sanitized one) serves the data of <tree>,
 * so that a fresh checkout runs without installing anything. */
static bool in_source_tree(char *dir, size_t len) {
    char exe[PATH_MAX], probe[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return false;
    exe[n] = 0;

    for (int up = 0; up < 3; up++) {
        char *slash = strrchr(exe, '/');
        if (!slash) return false;
        *slash = 0;
        struct stat st;
        snprintf(probe, sizeof probe, "%s/policies", exe);
        if (up > 0 && !stat(probe, &st) && S_ISDIR(st.st_mode)) {
            snprintf(dir, len, "%s", exe);
            return true;
        }
    }
    return false;
}

const char *pd_datadir(void) {
    static char dir[PATH_MAX];
    const char *env = getenv("PROMPTD_DATADIR");
    if (env && *env) return env;
    if (!dir[0] && !in_source_tree(dir, sizeof dir)) snprintf(dir, sizeof dir, "%s", PD_DATADIR);
    return dir;
}
