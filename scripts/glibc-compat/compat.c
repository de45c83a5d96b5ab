// The few C library functions newer than glibc 2.28 that the engine refers to, written with what glibc 2.28
// has. They come from code compiled on this newer system: the static libstdc++, Rust's standard library and
// llama.cpp. Linked into every engine file with hidden visibility, so each keeps its own copy and none exports
// them; on a newer glibc they are used as well, which is equally correct. See scripts/glibc-compat.sh.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define HIDDEN __attribute__((visibility("hidden")))

// glibc 2.32. libstdc++ skips atomic reference counting while this is non-zero; zero is always safe.
HIDDEN char __libc_single_threaded = 0;

// glibc 2.30.
HIDDEN pid_t gettid(void) { return (pid_t)syscall(SYS_gettid); }

// glibc 2.36 (std::random_device).
HIDDEN uint32_t arc4random(void) {
    uint32_t value;
    while (getrandom(&value, sizeof value, 0) != (ssize_t)sizeof value) {
    }
    return value;
}

HIDDEN void arc4random_buf(void *buffer, size_t length) {
    unsigned char *bytes = buffer;
    while (length > 0) {
        ssize_t got = getrandom(bytes, length, 0);
        if (got > 0) {
            bytes += got;
            length -= (size_t)got;
        }
    }
}

HIDDEN uint32_t arc4random_uniform(uint32_t upper_bound) {
    if (upper_bound < 2) return 0;
    // Reject the low values that would make some results more likely than others.
    uint32_t min = -upper_bound % upper_bound;
    for (;;) {
        uint32_t value = arc4random();
        if (value >= min) return value % upper_bound;
    }
}

// The deadline `abstime` on `clock`, as a deadline on CLOCK_REALTIME (what glibc 2.28's timed waits take).
static struct timespec realtime_deadline(clockid_t clock, const struct timespec *abstime) {
    if (clock == CLOCK_REALTIME) return *abstime;
    struct timespec now_on_clock, now_realtime;
    clock_gettime(clock, &now_on_clock);
    clock_gettime(CLOCK_REALTIME, &now_realtime);
    long long ns = (abstime->tv_sec - now_on_clock.tv_sec) * 1000000000LL + (abstime->tv_nsec - now_on_clock.tv_nsec);
    if (ns < 0) ns = 0;
    ns += now_realtime.tv_nsec;
    struct timespec deadline = {now_realtime.tv_sec + ns / 1000000000LL, ns % 1000000000LL};
    return deadline;
}

// glibc 2.30 (std::condition_variable and std::mutex waits on the steady clock).
HIDDEN int pthread_cond_clockwait(pthread_cond_t *cond, pthread_mutex_t *mutex, clockid_t clock,
                                  const struct timespec *abstime) {
    struct timespec deadline = realtime_deadline(clock, abstime);
    return pthread_cond_timedwait(cond, mutex, &deadline);
}

HIDDEN int pthread_mutex_clocklock(pthread_mutex_t *mutex, clockid_t clock, const struct timespec *abstime) {
    struct timespec deadline = realtime_deadline(clock, abstime);
    return pthread_mutex_timedlock(mutex, &deadline);
}

HIDDEN int pthread_rwlock_clockrdlock(pthread_rwlock_t *lock, clockid_t clock, const struct timespec *abstime) {
    struct timespec deadline = realtime_deadline(clock, abstime);
    return pthread_rwlock_timedrdlock(lock, &deadline);
}

HIDDEN int pthread_rwlock_clockwrlock(pthread_rwlock_t *lock, clockid_t clock, const struct timespec *abstime) {
    struct timespec deadline = realtime_deadline(clock, abstime);
    return pthread_rwlock_timedwrlock(lock, &deadline);
}
