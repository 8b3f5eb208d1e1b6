/*
 * A small, fast pseudo-random generator (xoshiro256**, seeded through splitmix64) for
 * sampling templates and for reproducible training runs. Not for secrets. Pure: the
 * caller owns the state; no globals, no I/O.
 */
#ifndef PD_RNG_H
#define PD_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} Rng;

/* Any seed, 0 included, gives a valid state; equal seeds give equal sequences. */
void rng_seed(Rng *r, uint64_t seed);

/* 64 uniformly random bits. */
uint64_t rng_next(Rng *r);

/* Uniform in [0, n), without modulo bias; n >= 1. */
uint32_t rng_below(Rng *r, uint32_t n);

/* Uniform in [0, 1), 53 bits of precision. */
double rng_uniform(Rng *r);

#endif
