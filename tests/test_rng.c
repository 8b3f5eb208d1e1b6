/* The sampler's generator: reproducible, and uniform without bias. */
#include <criterion/criterion.h>

#include "../kernels/rng.h"

Test(rng, equal_seeds_give_equal_sequences) {
    Rng a, b, c;
    rng_seed(&a, 42);
    rng_seed(&b, 42);
    rng_seed(&c, 43);
    int differ = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = rng_next(&a);
        cr_assert_eq(x, rng_next(&b));
        differ += x != rng_next(&c);
    }
    cr_expect_gt(differ, 990, "neighbouring seeds must give unrelated sequences");
}

Test(rng, zero_is_a_valid_seed) {
    Rng r;
    rng_seed(&r, 0);
    cr_expect_neq(rng_next(&r) | rng_next(&r), 0);
}

Test(rng, below_is_uniform) {
    Rng r;
    int counts[7] = {0};
    rng_seed(&r, 7);
    for (int i = 0; i < 70000; i++) {
        uint32_t v = rng_below(&r, 7);
        cr_assert_lt(v, 7);
        counts[v]++;
    }
    /* Chi-square with 6 degrees of freedom; 22.5 is the 0.999 quantile. */
    double chi = 0;
    for (int k = 0; k < 7; k++) chi += (counts[k] - 10000.0) * (counts[k] - 10000.0) / 10000.0;
    cr_expect_lt(chi, 22.5, "chi-square %.1f: not uniform", chi);
}

Test(rng, below_one_is_zero_and_uniform_is_in_range) {
    Rng r;
    rng_seed(&r, 1);
    for (int i = 0; i < 1000; i++) {
        cr_assert_eq(rng_below(&r, 1), 0);
        double u = rng_uniform(&r);
        cr_assert(u >= 0 && u < 1, "%g", u);
    }
}
