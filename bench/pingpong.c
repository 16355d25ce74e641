/* Round trip of one cache line between CPU 0 and CPU 1, in ns: two threads pinned to the
 * two CPUs hand a counter back and forth 2 million times. On the 2-vCPU cloud VMs of the
 * README it tells which state the VM is in: about 55 ns when the host runs both vCPUs on
 * cores that share a cache, about 330 ns when it does not, and then every engine whose
 * threads pass data between them loses (docs/speed.md, the AMD EPYC Zen 4 VM's runs).
 *
 *   cc -O2 -pthread bench/pingpong.c -o /tmp/pingpong && /tmp/pingpong
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#define ROUNDS 2000000L

static _Atomic long flag __attribute__((aligned(64)));

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) {
        fprintf(stderr, "pingpong: cannot pin a thread to CPU %d\n", cpu);
    }
}

static void *answer(void *unused) {
    (void)unused;
    pin(1);
    for (long i = 0; i < ROUNDS; i++) {
        while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 1) {
        }
        atomic_store_explicit(&flag, 2 * i + 2, memory_order_release);
    }
    return NULL;
}

int main(void) {
    pthread_t other;
    struct timespec start, end;
    pin(0);
    pthread_create(&other, NULL, answer, NULL);
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < ROUNDS; i++) {
        atomic_store_explicit(&flag, 2 * i + 1, memory_order_release);
        while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 2) {
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    pthread_join(other, NULL);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("%.0f ns round trip between CPU 0 and CPU 1\n", ns / ROUNDS);
    return 0;
}
