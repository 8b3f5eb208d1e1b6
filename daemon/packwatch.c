/* The pack loader thread and its inotify watches; see packwatch.h. */
#include "packwatch.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "pd.h"
#include "stats.h"

#define QUIET_MS     20  /* a burst of editor events must be quiet this long */
#define QUIET_MAX_MS 250 /* ... but a reload never waits longer than this for quiet */
#define WATCH_DEPTH  3   /* subdirectories of a pack that are watched */

#define DIR_EVENTS                                                                                 \
    (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_DELETE_SELF |       \
     IN_MOVE_SELF | IN_ATTRIB)

struct PackWatch {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t done;
    int wake[2]; /* the serving thread writes a byte to wake the loader */
    int inotify; /* -1 when not watching */
    int parent_wd;
    char *dir, *lib_dir, *base; /* base: the last component of dir */
    bool watch;

    /* Guarded by lock. */
    SandboxLimits limits;
    Pack *ready;
    Pack **retired;
    size_t nretired, retired_cap;
    bool stop;
    uint64_t requested, completed; /* reload generations */
    bool last_ok;
    char last_msg[1200];

    char version[17]; /* of the newest pack that passed (loader thread only) */
};

static void wake(PackWatch *w) {
    char byte = 1;
    ssize_t unused = write(w->wake[1], &byte, 1); /* a full pipe already means "wake" */
    (void)unused;
}

/* --- watches --- */

static void watch_tree(int fd, const char *dir, int depth) {
    if (inotify_add_watch(fd, dir, DIR_EVENTS | IN_ONLYDIR) < 0 || depth == 0) return;
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        char sub[PATH_MAX];
        if (e->d_name[0] == '.' || e->d_type != DT_DIR) continue;
        snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
        watch_tree(fd, sub, depth - 1);
    }
    closedir(d);
}

/* Watches the pack as it is now: the parent of the configured path (to see a symlink flip
 * or a directory renamed into place), the directory it resolves to, its subdirectories
 * and the helper library. Replaces the previous watches. */
static void rewatch(PackWatch *w) {
    if (!w->watch) return;
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
        pd_log(PD_LOG_WARNING, PD_MOD_LUA, "cannot watch %s (%s); reload with SIGHUP", w->dir,
               strerror(errno));
        return;
    }

    char parent[PATH_MAX], real[PATH_MAX];
    snprintf(parent, sizeof parent, "%.*s", (int)(w->base - w->dir), w->dir);
    if (!parent[0]) snprintf(parent, sizeof parent, ".");
    w->parent_wd = inotify_add_watch(fd, parent, DIR_EVENTS | IN_ONLYDIR);
    if (realpath(w->dir, real)) watch_tree(fd, real, WATCH_DEPTH);
    if (w->lib_dir && realpath(w->lib_dir, real)) watch_tree(fd, real, WATCH_DEPTH);

    if (w->inotify >= 0) close(w->inotify);
    w->inotify = fd;
}

/* True when an event can change the pack: a Lua file or a directory in a watched tree,
 * the pack's own entry in its parent, or a watched directory going away. */
static bool relevant(const PackWatch *w, const struct inotify_event *ev) {
    if (ev->mask & (IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) return true;
    if (!ev->len) return ev->wd != w->parent_wd;
    if (ev->wd == w->parent_wd) return !strcmp(ev->name, w->base);

    size_t len = strlen(ev->name);
    return (ev->mask & IN_ISDIR) || (len > 4 && !strcmp(ev->name + len - 4, ".lua"));
}

static bool read_events(PackWatch *w) {
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool any = false;
    ssize_t n;
    while ((n = read(w->inotify, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            any |= relevant(w, ev);
            p += sizeof *ev + ev->len;
        }
    }
    return any;
}

/* --- loading --- */

static void finish(PackWatch *w, uint64_t generation, bool ok, const char *msg) {
    pthread_mutex_lock(&w->lock);
    w->completed = generation;
    w->last_ok = ok;
    snprintf(w->last_msg, sizeof w->last_msg, "%s", msg);
    pthread_cond_broadcast(&w->done);
    pthread_mutex_unlock(&w->lock);
}

static void publish(PackWatch *w, Pack *p) {
    Pack *stale = NULL;
    pthread_mutex_lock(&w->lock);
    stale = w->ready; /* a version never taken is overtaken by this one */
    w->ready = p;
    pthread_mutex_unlock(&w->lock);
    pack_free(stale);
}

static void reload(PackWatch *w, bool forced) {
    char err[1024], msg[1100];
    pthread_mutex_lock(&w->lock);
    SandboxLimits limits = w->limits;
    uint64_t generation = w->requested;
    pthread_mutex_unlock(&w->lock);

    /* Watch first, so that a change made while this version loads triggers another. */
    rewatch(w);
    uint64_t start = pd_mono_ns();
    Pack *p = pack_load(w->dir, w->lib_dir, &limits, err, sizeof err);
    if (!p) {
        pd_count(&pd_stats.pack_reloads_failed, 1);
        atomic_store(&pd_stats.pack_last_reload_ok, 0);
        pd_log(PD_LOG_ERR, PD_MOD_LUA, "reload refused, the previous pack keeps serving: %s", err);
        snprintf(msg, sizeof msg, "refused: %s", err);
        finish(w, generation, false, msg);
        return;
    }

    if (!strcmp(pack_version(p), w->version)) {
        if (forced)
            pd_log(PD_LOG_INFO, PD_MOD_LUA, "pack %s unchanged (version %s)", pack_name(p),
                   pack_version(p));
        snprintf(msg, sizeof msg, "unchanged: pack %s version %s", pack_name(p), pack_version(p));
        pack_free(p);
        finish(w, generation, false, msg);
        return;
    }

    snprintf(w->version, sizeof w->version, "%s", pack_version(p));
    pd_count(&pd_stats.pack_reloads_ok, 1);
    atomic_store(&pd_stats.pack_last_reload_ok, 1);
    atomic_store(&pd_stats.pack_last_reload_ms, (uint64_t)pd_wall_ms());
    snprintf(msg, sizeof msg, "loaded: pack %s version %s, %zu templates, in %.1f ms", pack_name(p),
             pack_version(p), pack_template_count(p), (double)(pd_mono_ns() - start) / 1e6);
    pd_log(PD_LOG_NOTICE, PD_MOD_LUA, "%s", msg);
    publish(w, p);
    finish(w, generation, true, msg);
}

/* Frees the packs the serving thread handed back. */
static void close_retired(PackWatch *w) {
    pthread_mutex_lock(&w->lock);
    Pack **list = w->retired;
    size_t n = w->nretired;
    w->retired = NULL;
    w->nretired = w->retired_cap = 0;
    pthread_mutex_unlock(&w->lock);

    for (size_t i = 0; i < n; i++) pack_free(list[i]);
    free(list);
}

/* What woke the loader: returns true to stop; sets *forced on a request. */
static bool drain_wake(PackWatch *w, bool *forced, uint64_t *seen) {
    char buf[64];
    while (read(w->wake[0], buf, sizeof buf) > 0) continue;
    close_retired(w);

    pthread_mutex_lock(&w->lock);
    bool stop = w->stop;
    if (w->requested > *seen) {
        *forced = true;
        *seen = w->requested;
    }
    pthread_mutex_unlock(&w->lock);
    return stop;
}

static void *loader(void *arg) {
    PackWatch *w = arg;
    bool dirty = false, forced = false;
    uint64_t seen = 0, first_event = 0, last_event = 0;

    for (;;) {
        struct pollfd fds[2] = {{w->wake[0], POLLIN, 0}, {w->inotify, POLLIN, 0}};
        int timeout = -1;
        if (dirty) {
            uint64_t now = pd_mono_ms(), due = last_event + QUIET_MS;
            if (due > first_event + QUIET_MAX_MS) due = first_event + QUIET_MAX_MS;
            timeout = forced || due <= now ? 0 : (int)(due - now);
        }
        poll(fds, w->inotify >= 0 ? 2 : 1, timeout);

        if ((fds[0].revents & POLLIN) && drain_wake(w, &forced, &seen)) break;
        bool changed = w->inotify >= 0 && (fds[1].revents & POLLIN) && read_events(w);
        if (changed || forced) {
            last_event = pd_mono_ms();
            if (!dirty) first_event = last_event;
            dirty = true;
        }

        uint64_t now = pd_mono_ms();
        if (dirty &&
            (forced || now >= last_event + QUIET_MS || now >= first_event + QUIET_MAX_MS)) {
            reload(w, forced);
            dirty = forced = false;
        }
    }
    close_retired(w);
    return NULL;
}

/* --- the serving thread's side --- */

int packwatch_start(PackWatch **out, const PackWatchConfig *cfg, char *err, size_t errlen) {
    PackWatch *w = pd_xcalloc(1, sizeof *w);
    w->inotify = w->parent_wd = -1;
    w->dir = pd_xstrdup(cfg->dir);
    w->lib_dir = cfg->lib_dir ? pd_xstrdup(cfg->lib_dir) : NULL;
    w->watch = cfg->watch;
    w->limits = cfg->limits;
    snprintf(w->version, sizeof w->version, "%s", cfg->version ? cfg->version : "");

    /* The last path component, ignoring trailing slashes (the parent watch matches it). */
    size_t len = strlen(w->dir);
    while (len > 1 && w->dir[len - 1] == '/') w->dir[--len] = 0;
    char *slash = strrchr(w->dir, '/');
    w->base = slash ? slash + 1 : w->dir;

    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->done, NULL);
    if (pipe2(w->wake, O_NONBLOCK | O_CLOEXEC)) {
        snprintf(err, errlen, "cannot create the reload pipe: %s", strerror(errno));
        free(w);
        return -1;
    }
    rewatch(w);
    if (pthread_create(&w->thread, NULL, loader, w)) {
        snprintf(err, errlen, "cannot start the pack loader thread");
        close(w->wake[0]);
        close(w->wake[1]);
        free(w);
        return -1;
    }
    *out = w;
    return 0;
}

void packwatch_request(PackWatch *w) {
    pthread_mutex_lock(&w->lock);
    w->requested++;
    pthread_mutex_unlock(&w->lock);
    wake(w);
}

void packwatch_set_limits(PackWatch *w, const SandboxLimits *limits) {
    pthread_mutex_lock(&w->lock);
    w->limits = *limits;
    pthread_mutex_unlock(&w->lock);
}

Pack *packwatch_take(PackWatch *w) {
    pthread_mutex_lock(&w->lock);
    Pack *p = w->ready;
    w->ready = NULL;
    pthread_mutex_unlock(&w->lock);
    return p;
}

void packwatch_retire(PackWatch *w, Pack *old) {
    if (!old) return;
    pthread_mutex_lock(&w->lock);
    if (w->nretired == w->retired_cap) {
        size_t cap = w->retired_cap ? w->retired_cap * 2 : 4;
        Pack **grown = realloc(w->retired, cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&w->lock);
            pack_free(old); /* no memory to defer it: close it here, slower but correct */
            return;
        }
        w->retired = grown;
        w->retired_cap = cap;
    }
    w->retired[w->nretired++] = old;
    pthread_mutex_unlock(&w->lock);
    wake(w);
}

bool packwatch_wait(PackWatch *w, int timeout_ms, char *msg, size_t msglen) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) until.tv_sec++, until.tv_nsec -= 1000000000;

    pthread_mutex_lock(&w->lock);
    uint64_t want = w->requested;
    int rc = 0;
    while (w->completed < want && rc == 0) rc = pthread_cond_timedwait(&w->done, &w->lock, &until);
    bool ok = w->completed >= want && w->last_ok;
    snprintf(msg, msglen, "%s", w->completed >= want ? w->last_msg : "timed out");
    pthread_mutex_unlock(&w->lock);
    return ok;
}

void packwatch_stop(PackWatch *w) {
    if (!w) return;
    pthread_mutex_lock(&w->lock);
    w->stop = true;
    pthread_mutex_unlock(&w->lock);
    wake(w);
    pthread_join(w->thread, NULL);

    pack_free(w->ready);
    if (w->inotify >= 0) close(w->inotify);
    close(w->wake[0]);
    close(w->wake[1]);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->done);
    free(w->dir);
    free(w->lib_dir);
    free(w);
}
