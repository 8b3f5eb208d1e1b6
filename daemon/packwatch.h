/*
 * Hot reload of the policy pack, off the serving thread.
 *
 * A loader thread watches the pack's directory with inotify, including the parent of the
 * configured path, so that editors that save by writing a new file and renaming it, and
 * configuration management that swaps a whole directory by flipping a symlink, are both
 * seen. After a short quiet period it loads the new version into a fresh Lua state and
 * checks it (pack_load). A pack that passes is handed to the serving thread, which swaps
 * it in between batches; one that fails is refused and logged with its file and line, and
 * the previous pack keeps serving. SIGHUP asks for a reload too. Old packs are closed on
 * the loader thread, so that closing one never delays a batch.
 *
 * Reload results are counted in pd_stats (pack_reloads_ok, pack_reloads_failed).
 */
#ifndef PD_PACKWATCH_H
#define PD_PACKWATCH_H

#include <stdbool.h>
#include <stddef.h>

#include "pack.h"
#include "sandbox.h"

typedef struct PackWatch PackWatch;

typedef struct {
    const char *dir;     /* the configured pack path (may be a symlink) */
    const char *lib_dir; /* the helper library */
    SandboxLimits limits;
    bool watch;          /* use inotify; SIGHUP reloads either way */
    const char *version; /* of the pack already serving, to skip unchanged reloads */
} PackWatchConfig;

/* Starts the loader thread. Returns 0, or -1 with err filled. */
int packwatch_start(PackWatch **out, const PackWatchConfig *cfg, char *err, size_t errlen);

/* Asks for a reload now, even if no file changed (SIGHUP). Thread-safe. */
void packwatch_request(PackWatch *w);

/* Applies new limits to the packs loaded from now on. Serving thread. */
void packwatch_set_limits(PackWatch *w, const SandboxLimits *limits);

/* A newly checked pack, or NULL. The caller owns it. Serving thread; cheap. */
Pack *packwatch_take(PackWatch *w);

/* Hands back a pack that no longer serves, for closing on the loader thread. */
void packwatch_retire(PackWatch *w, Pack *old);

/* Waits for the latest requested reload to finish (reload or refusal). Returns true if it
 * produced a pack (take it with packwatch_take), false if it was refused or unchanged,
 * with the reason in msg. For `promptctl reload`-style synchronous callers and tests. */
bool packwatch_wait(PackWatch *w, int timeout_ms, char *msg, size_t msglen);

/* Stops the thread and frees whatever it holds. */
void packwatch_stop(PackWatch *w);

#endif
