/*
 * sd_notify by hand: an AF_UNIX datagram of "KEY=value" lines to $NOTIFY_SOCKET. systemd
 * learns the sender's pid from the kernel (SO_PASSCRED on its side), which is what
 * NotifyAccess=main checks, so nothing else needs to travel with the message.
 */
#include "notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "pd.h"

/* Written by notify_init only, before other threads exist; read by every sender. */
static int sock = -1;
static struct sockaddr_un addr;
static socklen_t addr_len;
static uint64_t watchdog_usec;

static atomic_uint_fast64_t last_ping_usec; /* CLOCK_MONOTONIC of the last WATCHDOG=1 */
static atomic_uint_fast64_t sent, failed;
static atomic_int last_errno;

static uint64_t mono_usec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void notify_close(void) {
    if (sock >= 0) close(sock);
    sock = -1;
    watchdog_usec = 0;
}

/* Fills addr from NOTIFY_SOCKET: "/path" or "@abstract". */
static int parse_socket(const char *value, char *err, size_t errlen) {
    size_t n = strlen(value);
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if ((value[0] != '/' && value[0] != '@') || n < 2)
        return snprintf(err, errlen, "NOTIFY_SOCKET=%s: not an absolute path or @name", value),
               PD_EINVAL;
    if (n >= sizeof addr.sun_path)
        return snprintf(err, errlen, "NOTIFY_SOCKET=%s: longer than %zu bytes", value,
                        sizeof addr.sun_path - 1),
               PD_EINVAL;

    /* An abstract name starts with a NUL and has no terminator: its length is exact. */
    memcpy(addr.sun_path, value, n);
    if (value[0] == '@') addr.sun_path[0] = '\0';
    addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (value[0] == '/'));
    return PD_OK;
}

/* WATCHDOG_USEC applies to us unless WATCHDOG_PID names another process. */
static uint64_t parse_watchdog(void) {
    const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    char *end;
    if (!usec) return 0;
    unsigned long long v = strtoull(usec, &end, 10);
    if (*end || v == 0) return 0;
    if (pid && strtol(pid, &end, 10) != (long)getpid()) return 0;
    return v;
}

int notify_init(char *err, size_t errlen) {
    const char *value = getenv("NOTIFY_SOCKET");
    notify_close();
    atomic_store(&last_ping_usec, 0);
    if (!value || !*value) return PD_OK;

    int rc = parse_socket(value, err, errlen);
    if (rc) return rc;
    sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return snprintf(err, errlen, "notify socket: %s", strerror(errno)), PD_EIO;
    watchdog_usec = parse_watchdog();
    return PD_OK;
}

bool notify_enabled(void) {
    return sock >= 0;
}

uint64_t notify_watchdog_usec(void) {
    return sock >= 0 ? watchdog_usec : 0;
}

static int send_text(const char *text) {
    if (sock < 0) return 0;
    ssize_t n = sendto(sock, text, strlen(text), MSG_DONTWAIT | MSG_NOSIGNAL,
                       (const struct sockaddr *)&addr, addr_len);
    if (n < 0) {
        atomic_store(&last_errno, errno);
        atomic_fetch_add(&failed, 1);
        return -1;
    }
    atomic_fetch_add(&sent, 1);
    return 1;
}

int notify_ready(void) {
    return send_text("READY=1");
}

int notify_reloading(void) {
    char text[64];
    snprintf(text, sizeof text, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)mono_usec());
    return send_text(text);
}

int notify_stopping(void) {
    return send_text("STOPPING=1");
}

int notify_status(const char *fmt, ...) {
    char text[1024 + 8] = "STATUS=";
    va_list ap;
    if (sock < 0) return 0;
    va_start(ap, fmt);
    vsnprintf(text + 7, sizeof text - 7, fmt, ap);
    va_end(ap);

    /* A newline would start another assignment. */
    for (char *p = text; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    return send_text(text);
}

int notify_extend_timeout(uint64_t usec) {
    char text[64];
    snprintf(text, sizeof text, "EXTEND_TIMEOUT_USEC=%llu", (unsigned long long)usec);
    return send_text(text);
}

int notify_watchdog(void) {
    if (sock < 0 || watchdog_usec == 0) return 0;
    uint64_t now = mono_usec(), last = atomic_load(&last_ping_usec);
    if (last && now - last < watchdog_usec / 2) return 0;

    /* One thread wins a due ping; another calling at the same moment skips it. */
    if (!atomic_compare_exchange_strong(&last_ping_usec, &last, now)) return 0;
    return send_text("WATCHDOG=1");
}

NotifyStats notify_stats(void) {
    NotifyStats st = {atomic_load(&sent), atomic_load(&failed), atomic_load(&last_errno)};
    return st;
}
