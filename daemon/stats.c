/* The counters themselves; see stats.h. */
#include "stats.h"

PdStats pd_stats;
