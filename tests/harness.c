/* Test harness: processes, files and scratch directories for the integration tests. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../daemon/metrics.h"

long long harness_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* --- processes --- */

static int redirect(const char *path, int fd, int flags) {
    int f = open(path ? path : "/dev/null", flags, 0644);
    if (f < 0) return -1;
    dup2(f, fd);
    close(f);
    return 0;
}

static int start(Proc *p, char *const argv[], const char *in_path, int in_fd, const char *out_path,
                 const char *err_path) {
    memset(p, 0, sizeof *p);
    p->pid = fork();
    if (p->pid < 0) return -1;
    if (p->pid == 0) {
        /* Its own process group, so that a test's kill never reaches the test runner; and
         * it dies with the test, even one that crashed before it could clean up. */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (in_fd >= 0 ? dup2(in_fd, 0) < 0 : redirect(in_path, 0, O_RDONLY) != 0) _exit(126);
        if (redirect(out_path, 1, O_WRONLY | O_CREAT | O_APPEND) ||
            redirect(err_path, 2, O_WRONLY | O_CREAT | O_APPEND))
            _exit(126);
        execvp(argv[0], argv);
        _exit(127);
    }
    return 0;
}

int proc_start(Proc *p, char *const argv[], const char *in_path, const char *out_path,
               const char *err_path) {
    return start(p, argv, in_path, -1, out_path, err_path);
}

int proc_start_fd(Proc *p, char *const argv[], int in_fd, const char *out_path,
                  const char *err_path) {
    return start(p, argv, NULL, in_fd, out_path, err_path);
}

/* --- a paced stream --- */

struct Feeder {
    pthread_t thread;
    FILE *in;
    int fd;
    int rate;
    long lines;
};

static void *feed(void *arg) {
    Feeder *f = arg;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long long start = harness_now_ms();
    while ((len = getline(&line, &cap, f->in)) > 0) {
        if (write(f->fd, line, (size_t)len) != len) break;
        /* Ahead of schedule: wait until the clock catches up with the line count. */
        long long due = start + f->lines++ * 1000 / f->rate;
        long long ahead = due - harness_now_ms();
        if (ahead > 0) sleep_ms((int)ahead);
    }
    free(line);
    close(f->fd);
    return NULL;
}

Feeder *feeder_start(const char *path, int fd, int rate) {
    Feeder *f = calloc(1, sizeof *f);
    f->in = fopen(path, "r");
    f->fd = fd;
    f->rate = rate;
    if (!f->in || pthread_create(&f->thread, NULL, feed, f)) {
        if (f->in) fclose(f->in);
        free(f);
        return NULL;
    }
    return f;
}

long feeder_join(Feeder *f) {
    pthread_join(f->thread, NULL);
    fclose(f->in);
    long lines = f->lines;
    free(f);
    return lines;
}

int proc_wait(Proc *p, int timeout_ms) {
    long long deadline = harness_now_ms() + timeout_ms;
    while (!p->exited) {
        pid_t r = waitpid(p->pid, &p->status, WNOHANG);
        if (r == p->pid) {
            p->exited = true;
            break;
        }
        if (r < 0 && errno != EINTR) return -1;
        if (harness_now_ms() >= deadline) return -1;
        sleep_ms(10);
    }
    if (WIFEXITED(p->status)) return WEXITSTATUS(p->status);
    return 128 + WTERMSIG(p->status);
}

void proc_signal(Proc *p, int sig) {
    if (p->pid <= 0 || p->exited) return;
    kill(p->pid, sig);
    if (sig == SIGKILL) proc_wait(p, 10000);
}

void proc_stop(Proc *p) {
    if (p->pid <= 0 || p->exited) return;
    kill(p->pid, SIGTERM);
    if (proc_wait(p, 10000) < 0) proc_signal(p, SIGKILL);
}

/* --- files --- */

static char tmpdir[512];

const char *harness_tmpdir(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/promptd-test-XXXXXX", base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) return NULL;
    return tmpdir;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

void harness_cleanup(void) {
    if (tmpdir[0] && !getenv("PROMPTD_KEEP_TEST_FILES"))
        nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    tmpdir[0] = 0;
}

const char *harness_path(char *buf, size_t len, const char *dir, const char *name) {
    snprintf(buf, len, "%s/%s", dir, name);
    return buf;
}

char *harness_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) buf = realloc(buf, (cap *= 2) + 1);
    }
    fclose(f);
    if (!buf) return NULL;
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

int harness_wait_file(const char *path, int timeout_ms) {
    long long deadline = harness_now_ms() + timeout_ms;
    struct stat st;
    while (stat(path, &st) != 0 || st.st_size == 0) {
        if (harness_now_ms() >= deadline) return -1;
        sleep_ms(20);
    }
    return 0;
}

int harness_wait_text(const char *path, const char *needle, int timeout_ms) {
    long long deadline = harness_now_ms() + timeout_ms;
    for (;;) {
        char *text = harness_read_file(path, NULL);
        bool found = text && strstr(text, needle);
        free(text);
        if (found) return 0;
        if (harness_now_ms() >= deadline) return -1;
        sleep_ms(50);
    }
}

/* --- following kcat's output --- */

int tail_open(Tail *t, const char *path) {
    memset(t, 0, sizeof *t);
    t->fd = open(path, O_RDONLY | O_CREAT, 0644);
    return t->fd < 0 ? -1 : 0;
}

char *tail_next(Tail *t) {
    /* The previous line's bytes are dropped now; the caller may have written into them. */
    if (t->used) memmove(t->buf, t->buf + t->used, t->len - t->used);
    t->len -= t->used;
    t->used = 0;
    for (;;) {
        char *nl = t->len ? memchr(t->buf, '\n', t->len) : NULL;
        if (nl) {
            *nl = 0;
            t->used = (size_t)(nl - t->buf) + 1;
            return t->buf;
        }
        if (t->cap - t->len < 65536) {
            t->cap = t->cap ? t->cap * 2 : 1 << 20;
            t->buf = realloc(t->buf, t->cap);
        }
        ssize_t n = read(t->fd, t->buf + t->len, t->cap - t->len);
        if (n <= 0) return NULL;
        t->len += (size_t)n;
    }
}

void tail_close(Tail *t) {
    if (t->fd >= 0) close(t->fd);
    free(t->buf);
    memset(t, 0, sizeof *t);
    t->fd = -1;
}

const char *harness_promptd(void) {
    const char *p = getenv("PROMPTD");
    return p ? p : "build/promptd";
}

/* --- realistic prompts --- */

void harness_prompt_text(char *text, size_t len, int i) {
    static const char *const templates[] = {
        "WTG-%02d gearbox bearing temperature %d C above limit",
        "CRAC unit %d return air %d.%dC high, rack row B",
        "UPS-%d on battery, load %d%%, input voltage lost",
        "风机%d号 齿轮箱轴承温度 %d°C 超限",
        "PDU %d branch circuit %d overcurrent 16.%dA",
        "core switch 10.0.%d.%d BGP session down",
    };
    snprintf(text, len, templates[i % 6], i % 40 + 1, 60 + i % 37, i % 10);
}

int harness_write_prompts(const char *path, const char *prefix, int n) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    for (int i = 0; i < n; i++) {
        char text[256];
        harness_prompt_text(text, sizeof text, i);
        fprintf(f, "%s%d\t{\"id\":\"%s%d\",\"text\":\"%s\",\"session\":\"s%d\"}\n", prefix, i,
                prefix, i, text, i % 97);
    }
    return fclose(f);
}

double harness_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int harness_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double harness_metric(const char *target, const char *line_start) {
    static char body[1 << 18];
    char err[256];
    int status = 0;
    if (metrics_client_request(target, "GET", "/metrics", 5000, &status, body, sizeof body, err,
                               sizeof err) ||
        status != 200)
        return -1;
    const char *at = strstr(body, line_start);
    return at ? strtod(at + strlen(line_start), NULL) : -1;
}

/* Counts the "experience id=<prefix>N" lines of the log per N into learned[]; returns the
 * number of lines, or -1 when the log cannot be read. The lines are promptd's with
 * log.debug=learner. */
int harness_count_experiences(const char *log, const char *prefix, int *learned, int n) {
    char needle[64];
    int lines = 0;
    snprintf(needle, sizeof needle, "experience id=%s", prefix);
    char *text = harness_read_file(log, NULL);
    if (!text) return -1;
    memset(learned, 0, (size_t)n * sizeof *learned);
    for (char *p = text; (p = strstr(p, needle)); p += strlen(needle)) {
        int i = atoi(p + strlen(needle));
        if (i >= 0 && i < n) learned[i]++;
        lines++;
    }
    free(text);
    return lines;
}

int harness_count_text(const char *path, const char *needle) {
    char *text = harness_read_file(path, NULL);
    int n = 0;
    for (const char *p = text; p && (p = strstr(p, needle)); p++) n++;
    free(text);
    return n;
}
