/*
 * What the integration tests share: child processes (promptd, kcat) with their output in
 * files, a scratch directory per test, waiting on files, and reading kcat's output.
 * Every wait is bounded, so a broken daemon fails a test instead of hanging the suite.
 */
#ifndef PD_TEST_HARNESS_H
#define PD_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct {
    pid_t pid;
    int status; /* from waitpid, once it has exited */
    bool exited;
} Proc;

/* Starts argv[0] (searched in PATH) with stdin from in_path (or /dev/null) and stdout and
 * stderr appended to the given files (or /dev/null). Returns 0 or -1. */
int proc_start(Proc *p, char *const argv[], const char *in_path, const char *out_path,
               const char *err_path);

/* As proc_start, with stdin read from in_fd (which the child gets; the caller closes its
 * copy). */
int proc_start_fd(Proc *p, char *const argv[], int in_fd, const char *out_path,
                  const char *err_path);

/* Writes the lines of path into fd at about rate lines per second, from a thread, then
 * closes fd: a stream that keeps flowing while a test kills and restarts the daemon. */
typedef struct Feeder Feeder;
Feeder *feeder_start(const char *path, int fd, int rate);
/* Waits for the feeder to finish; returns the number of lines written. */
long feeder_join(Feeder *f);

/* Waits up to timeout_ms for exit. Returns the exit code, 128+signal if killed, or -1 on
 * timeout. */
int proc_wait(Proc *p, int timeout_ms);

/* Sends sig; with SIGKILL also reaps the child. */
void proc_signal(Proc *p, int sig);

/* Stops a child that may still run (SIGTERM, then SIGKILL after 10 s). */
void proc_stop(Proc *p);

/* A fresh directory under $TMPDIR (or /tmp), removed by harness_cleanup. Returns a static
 * buffer valid until the next call. */
const char *harness_tmpdir(void);
void harness_cleanup(void);

/* path = dir/name into buf. */
const char *harness_path(char *buf, size_t len, const char *dir, const char *name);

/* Reads a whole file; NULL if absent. The caller frees. */
char *harness_read_file(const char *path, size_t *len);

/* Waits until path exists and is non-empty. Returns 0, or -1 after timeout_ms. */
int harness_wait_file(const char *path, int timeout_ms);

/* Waits until the file contains needle. Returns 0 or -1 after timeout_ms. */
int harness_wait_text(const char *path, const char *needle, int timeout_ms);

/* A metric of promptd's, read from /metrics at target (an admin socket path, or
 * host:port): the number after line_start ("\nname{labels} "), or -1 when the page cannot
 * be read or has no such line. */
double harness_metric(const char *target, const char *line_start);

/* Counts promptd's "experience id=<prefix>N" lines (log.debug=learner) in log per N into
 * learned[0..n); returns the number of lines, or -1 when the log cannot be read. */
int harness_count_experiences(const char *log, const char *prefix, int *learned, int n);

/* How many times needle occurs in the file at path (0 when it cannot be read). */
int harness_count_text(const char *path, const char *needle);

/* Follows a growing file line by line, as tail -f does. */
typedef struct {
    int fd;
    char *buf;
    size_t len, cap;
    size_t used; /* bytes of the line last returned, dropped by the next call */
} Tail;

int tail_open(Tail *t, const char *path);
/* Next complete line (without the newline), or NULL when none is complete yet. The line is
 * valid until the next call. */
char *tail_next(Tail *t);
void tail_close(Tail *t);

/* The path of the promptd binary under test ($PROMPTD, else build/promptd). */
const char *harness_promptd(void);

/* Writes n prompts as lines "<key>\t<json>" for kcat -K'\t': the key is the prompt's id, so
 * that the prompts spread over the partitions, and the JSON carries a realistic alarm
 * text. Returns 0 or -1. */
int harness_write_prompts(const char *path, const char *prefix, int n);

/* The alarm text of prompt i, as harness_write_prompts writes it. */
void harness_prompt_text(char *text, size_t len, int i);

/* Monotonic milliseconds. */
long long harness_now_ms(void);

/* Seconds on the monotonic clock, for the benchmarks' rounds. */
double harness_seconds(void);

/* qsort's comparison of doubles, ascending: the benchmarks' medians. */
int harness_cmp_double(const void *a, const void *b);

#endif
