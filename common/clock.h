/* Clocks in milliseconds: wall-clock time for event times, monotonic time for deadlines. */
#ifndef US_CLOCK_H
#define US_CLOCK_H

#include <stdint.h>

/* Unix time in milliseconds (CLOCK_REALTIME): what event times and Redis scores are made of. */
int64_t us_now_ms(void);

/* Milliseconds on a clock that never jumps (CLOCK_MONOTONIC): for timeouts and deadlines, which
 * must not stretch or shrink when the wall clock is set. */
int64_t us_monotonic_ms(void);

/* Nanoseconds on CLOCK_MONOTONIC: latencies. */
int64_t us_monotonic_ns(void);

/* Sleeps ms milliseconds (a signal may end it early). */
void us_sleep_ms(int64_t ms);

#endif
