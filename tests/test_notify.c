/*
 * The sd_notify protocol against a fake NOTIFY_SOCKET that the test binds (PID 1 here is
 * not systemd): a path socket and an abstract one, the messages and their fields, the
 * sender's credentials (what NotifyAccess=main checks), the watchdog's rate, and sends
 * that fail or would block.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../daemon/notify.h"
#include "../daemon/pd.h"
#include "harness.h"

static int listener = -1;
static char sock_path[256];

static void teardown(void) {
    notify_close();
    if (listener >= 0) close(listener);
    listener = -1;
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    harness_cleanup();
}

TestSuite(notify, .fini = teardown);

/* Binds a datagram socket at name ("/path" or "@abstract"), as systemd does, and points
 * NOTIFY_SOCKET at it. */
static void listen_at(const char *name) {
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    size_t n = strlen(name);
    memcpy(sun.sun_path, name, n);
    if (name[0] == '@') sun.sun_path[0] = '\0';
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (name[0] == '/'));

    listener = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(listener, 0);
    cr_assert_eq(bind(listener, (struct sockaddr *)&sun, len), 0, "bind %s: %s", name,
                 strerror(errno));
    int on = 1;
    setsockopt(listener, SOL_SOCKET, SO_PASSCRED, &on, sizeof on);
    struct timeval tv = {2, 0};
    setsockopt(listener, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

    char err[256] = "";
    setenv("NOTIFY_SOCKET", name, 1);
    cr_assert_eq(notify_init(err, sizeof err), 0, "notify_init: %s", err);
    cr_assert(notify_enabled());
}

static void listen_path(void) {
    snprintf(sock_path, sizeof sock_path, "%s/notify", harness_tmpdir());
    listen_at(sock_path);
}

/* Receives one datagram into buf; returns the sender's pid from its credentials. */
static pid_t receive(char *buf, size_t len) {
    char control[CMSG_SPACE(sizeof(struct ucred))];
    struct iovec iov = {buf, len - 1};
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    ssize_t n = recvmsg(listener, &msg, 0);
    cr_assert_geq(n, 0, "no datagram: %s", strerror(errno));
    buf[n] = '\0';
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
            struct ucred cred;
            memcpy(&cred, CMSG_DATA(c), sizeof cred);
            return cred.pid;
        }
    return 0;
}

static void expect_message(const char *want) {
    char buf[2048];
    pid_t pid = receive(buf, sizeof buf);
    cr_expect_str_eq(buf, want);
    cr_expect_eq(pid, getpid(), "sender pid: expected %d, got %d", (int)getpid(), (int)pid);
}

static int pending(void) {
    char buf[64];
    return (int)recv(listener, buf, sizeof buf, MSG_DONTWAIT) >= 0;
}

Test(notify, without_notify_socket_every_call_is_a_no_op) {
    char err[256] = "";
    unsetenv("NOTIFY_SOCKET");
    setenv("WATCHDOG_USEC", "1000000", 1);
    cr_assert_eq(notify_init(err, sizeof err), 0);
    cr_expect_not(notify_enabled());
    cr_expect_eq(notify_watchdog_usec(), 0);
    cr_expect_eq(notify_ready(), 0);
    cr_expect_eq(notify_reloading(), 0);
    cr_expect_eq(notify_status("serving %d", 1), 0);
    cr_expect_eq(notify_watchdog(), 0);
    cr_expect_eq(notify_stopping(), 0);
}

Test(notify, messages_arrive_on_a_path_socket_from_this_process) {
    listen_path();
    cr_expect_eq(notify_ready(), 1);
    expect_message("READY=1");
    cr_expect_eq(notify_status("serving: %d prompts/s, policy v%d", 1200, 7), 1);
    expect_message("STATUS=serving: 1200 prompts/s, policy v7");
    cr_expect_eq(notify_extend_timeout(5000000), 1);
    expect_message("EXTEND_TIMEOUT_USEC=5000000");
    cr_expect_eq(notify_stopping(), 1);
    expect_message("STOPPING=1");
}

Test(notify, messages_arrive_on_an_abstract_socket) {
    char name[64];
    snprintf(name, sizeof name, "@promptd-test-notify-%d", (int)getpid());
    listen_at(name);
    cr_expect_eq(notify_ready(), 1);
    expect_message("READY=1");
    cr_expect_eq(notify_stopping(), 1);
    expect_message("STOPPING=1");
}

Test(notify, reloading_carries_the_monotonic_time) {
    char buf[256];
    struct timespec ts;
    unsigned long long usec = 0;
    listen_path();

    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned long long before = (unsigned long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    cr_assert_eq(notify_reloading(), 1);
    receive(buf, sizeof buf);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned long long after = (unsigned long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;

    cr_assert_eq(sscanf(buf, "RELOADING=1\nMONOTONIC_USEC=%llu", &usec), 1, "got '%s'", buf);
    cr_expect(usec >= before && usec <= after, "MONOTONIC_USEC %llu outside [%llu, %llu]", usec,
              before, after);
    cr_expect_eq(notify_ready(), 1);
    expect_message("READY=1");
}

Test(notify, status_stays_one_line) {
    listen_path();
    cr_expect_eq(notify_status("reload refused:\nfile:3: key: bad\r\n"), 1);
    expect_message("STATUS=reload refused: file:3: key: bad  ");
}

/* Called every millisecond for 600 ms with a 100 ms watchdog, pings come every 50 ms. */
Test(notify, watchdog_pings_every_half_interval_however_often_called) {
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("WATCHDOG_USEC", "100000", 1);
    setenv("WATCHDOG_PID", pid, 1);
    listen_path();
    cr_assert_eq(notify_watchdog_usec(), 100000);

    long long start = harness_now_ms(), last = -1, min_gap = 1 << 30, max_gap = 0;
    int pings = 0;
    while (harness_now_ms() - start < 600) {
        if (notify_watchdog() == 1) {
            long long now = harness_now_ms();
            if (last >= 0 && now - last < min_gap) min_gap = now - last;
            if (last >= 0 && now - last > max_gap) max_gap = now - last;
            last = now;
            pings++;
        }
        usleep(1000);
    }
    /* The gap is half the interval plus at most one call's delay; a loaded machine may
     * delay a call, but a gap of a whole interval would let systemd fire. */
    cr_expect(pings >= 9 && pings <= 13, "expected about 12 pings in 600 ms, got %d", pings);
    cr_expect_geq(min_gap, 49, "pings %lld ms apart: faster than half the interval", min_gap);
    cr_expect_lt(max_gap, 95, "pings %lld ms apart: the watchdog fires at 100 ms", max_gap);

    for (int i = 0; i < pings; i++) expect_message("WATCHDOG=1");
    cr_expect_not(pending(), "more datagrams than pings reported");
}

Test(notify, watchdog_for_another_process_is_off) {
    setenv("WATCHDOG_USEC", "100000", 1);
    setenv("WATCHDOG_PID", "1", 1);
    listen_path();
    cr_expect_eq(notify_watchdog_usec(), 0);
    cr_expect_eq(notify_watchdog(), 0);
    cr_expect_not(pending());
}

Test(notify, a_malformed_notify_socket_is_reported_and_turns_notifications_off) {
    char err[256] = "";
    setenv("NOTIFY_SOCKET", "relative/notify", 1);
    cr_expect_eq(notify_init(err, sizeof err), PD_EINVAL);
    cr_expect(strstr(err, "NOTIFY_SOCKET=relative/notify"), "err: %s", err);
    cr_expect_not(notify_enabled());
    cr_expect_eq(notify_ready(), 0);
}

Test(notify, failed_sends_are_counted_not_fatal) {
    char err[256] = "", path[256];
    snprintf(path, sizeof path, "%s/nobody-listens", harness_tmpdir());
    setenv("NOTIFY_SOCKET", path, 1);
    cr_assert_eq(notify_init(err, sizeof err), 0, "%s", err);
    NotifyStats before = notify_stats();
    cr_expect_eq(notify_ready(), -1);
    cr_expect_eq(notify_status("x"), -1);
    NotifyStats after = notify_stats();
    cr_expect_eq(after.failed - before.failed, 2);
    cr_expect_eq(after.last_errno, ENOENT, "last_errno %d", after.last_errno);
}

/* A receiver that never reads (systemd stuck) fills its queue: the sender must not block. */
Test(notify, a_full_receiver_never_blocks_the_sender) {
    listen_path();
    int small = 4096;
    setsockopt(listener, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    NotifyStats before = notify_stats();
    long long start = harness_now_ms();
    for (int i = 0; i < 5000; i++) notify_status("status %d", i);
    long long took = harness_now_ms() - start;
    NotifyStats after = notify_stats();
    cr_expect_lt(took, 2000, "5000 sends took %lld ms", took);
    cr_expect_gt(after.failed - before.failed, 0, "expected EAGAIN once the queue is full");
    cr_expect_eq(after.last_errno, EAGAIN, "last_errno %d", after.last_errno);
}
