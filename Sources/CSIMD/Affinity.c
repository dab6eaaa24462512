// Thread affinity (Glibc's Swift overlay does not export the GNU extensions).
#define _GNU_SOURCE
#include "CSIMD.h"

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>

int csimd_allowed_cpus(int *out, int max) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
    int n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && n < max; cpu++)
        if (CPU_ISSET(cpu, &set)) out[n++] = cpu;
    return n;
}

int csimd_pin_thread(unsigned long thread, int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np((pthread_t)thread, sizeof set, &set);
}
#else
int csimd_allowed_cpus(int *out, int max) { (void)out; (void)max; return -1; }
int csimd_pin_thread(unsigned long thread, int cpu) { (void)thread; (void)cpu; return -1; }
#endif
