/*
 * The sd_notify protocol, written by hand (one datagram per message, no libsystemd): tells
 * systemd that promptd is ready, reloading, stopping, what it is doing (STATUS=), and that
 * the serving loop is alive (WATCHDOG=1).
 *
 * Without NOTIFY_SOCKET in the environment (not started by systemd with Type=notify) every
 * call is a no-op. A failed send is counted, never reported: systemd being slow must not
 * stop the service, and the sends never block (MSG_DONTWAIT).
 *
 * notify_init reads the environment; call it from main before the other calls and before
 * starting threads. After that, any thread may call the senders.
 */
#ifndef PD_NOTIFY_H
#define PD_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Reads NOTIFY_SOCKET (an absolute path, or "@name" in the abstract namespace) and
 * WATCHDOG_USEC / WATCHDOG_PID, and opens the socket. Calling it again re-reads them (tests
 * do). Returns 0, also when there is no NOTIFY_SOCKET, or PD_EINVAL (a malformed variable:
 * notifications are then off) or PD_EIO, with err. */
int notify_init(char *err, size_t errlen);

/* Closes the socket; later calls are no-ops until notify_init. */
void notify_close(void);

/* Whether NOTIFY_SOCKET was found. */
bool notify_enabled(void);

/* The watchdog interval in microseconds, or 0 when systemd watches no process or another
 * one (WATCHDOG_PID names a different pid). */
uint64_t notify_watchdog_usec(void);

/* Each returns 1 when the message was sent, 0 when notifications are off (or, for the
 * watchdog, not due), -1 when the send failed (counted). */

/* "READY=1": start-up done, or a reload finished. */
int notify_ready(void);

/* "RELOADING=1" with "MONOTONIC_USEC=" (the reload's start on CLOCK_MONOTONIC, which
 * systemd 253+ needs to match the reload to the request); READY=1 ends it. */
int notify_reloading(void);

/* "STOPPING=1": the drain has begun. */
int notify_stopping(void);

/* "STATUS=<text>", one line for systemctl status (newlines become spaces, at most 1 KiB). */
int notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* "EXTEND_TIMEOUT_USEC=": asks for usec more time to start, reload or stop. */
int notify_extend_timeout(uint64_t usec);

/* "WATCHDOG=1", at most once per half the watchdog interval: call it from the serving
 * loop as often as it likes, so that a stalled loop stops the pings. */
int notify_watchdog(void);

typedef struct {
    uint64_t sent;   /* datagrams sent */
    uint64_t failed; /* sends that failed */
    int last_errno;  /* of the last failure, 0 if none */
} NotifyStats;

NotifyStats notify_stats(void);

#endif
